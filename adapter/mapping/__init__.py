"""Mapping tables: load, validate and compile a YAML file into a translator.

A mapping file (format in ``mappings/README.md``) says which source events become
which Miso interaction type and where each Miso field's value comes from. It is
data: validated once with marshmallow (errors name file, line and key), then
compiled, so translating an event never looks at YAML again. Each value spec becomes a
resolver (a small Python function); the fields of each rule (its own, then the page-view
and common ones) become one generated Python function, written as source and ``exec``-ed
at load, that builds the record's fields in a single call, with plain key reads inlined.
Item lists, links and deletions stay resolvers.

    translator = load_mapping(Path("mappings/segment.yaml"))
    result = translator.translate(message)   # → Translation(records, links, deletions, skipped)
    user = translator.users(merged)          # `users:` section (adapter.users) → a UserRecord

Conversions are chosen by the *target* field (``rating`` is always a number, a
``timestamp`` always UTC with milliseconds, ``context.truncated_ip`` always a
truncated IPv4), and a field the target type does not allow is a load error, so
every record a translator emits has the shape Miso's schema requires.

Modules, each building on the ones before it:

* ``paths``: the path syntax, fast readers for paths, event-name normalisation;
* ``schema``: the marshmallow schema of a table file, and its located problems;
* ``codegen``: field conversions, resolvers, and the generated builder of a rule's fields;
* ``translator``: :class:`Translator` and the compiled rules it runs;
* ``compiler``: validated table data to a :class:`Translator`;
* ``load``: a table read from a file or text.
"""

from adapter.mapping.load import default_mappings_dir, load_mapping, load_mapping_text
from adapter.mapping.paths import normalize_name
from adapter.mapping.schema import MappingError, Problem
from adapter.mapping.translator import Explanation, Translation, Translator

__all__ = [
    "Explanation",
    "MappingError",
    "Problem",
    "Translation",
    "Translator",
    "default_mappings_dir",
    "load_mapping",
    "load_mapping_text",
    "normalize_name",
]
