"""The benchmarks: ``python -m bench`` runs them all (see ``bench/__main__.py``).

Not installed with the package (``setup.cfg`` ships ``adapter`` only) and not collected by
pytest (``testpaths = ["tests"]``): benchmarks measure, they do not pass or fail a build.
"""
