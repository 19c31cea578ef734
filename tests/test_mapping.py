"""The mapping engine: what each construct of the YAML format does to an event."""

from __future__ import annotations

import textwrap

import pytest

from adapter.identity import Link
from adapter.mapping import Translator, load_mapping_text, normalize_name

HEADER = """\
version: 1
event_name: event
call_type: type
common:
  user_id: userId
  anonymous_id: anonymousId
"""


def table(body: str, header: str = HEADER) -> Translator:
    """Compile a small mapping: the common header plus ``body``."""
    return load_mapping_text(header + textwrap.dedent(body), "test.yaml")


def one(translator: Translator, event: dict) -> dict:
    """The single record ``event`` translates to."""
    result = translator.translate(event)
    assert result.skipped is None, result.skipped
    assert len(result.records) == 1
    return result.records[0]


class TestMatching:
    def test_event_names_match_case_insensitively(self):
        """Any capitalisation of a listed name selects the rule."""
        t = table("rules:\n  - events: [Product Viewed]\n    type: product_detail_page_view\n")
        for name in ("Product Viewed", "product viewed", "PRODUCT VIEWED", " Product  Viewed "):
            rec = one(t, {"type": "track", "event": name, "userId": "u"})
            assert rec == {"type": "product_detail_page_view", "user_id": "u"}

    def test_underscores_and_hyphens_match_spaces(self):
        """snake_case and kebab-case spellings of a name match the spaced name."""
        t = table("rules:\n  - events: [Product Viewed]\n    type: product_detail_page_view\n")
        for name in ("product_viewed", "Product-Viewed", "product__viewed"):
            assert one(t, {"event": name, "userId": "u"})["type"] == "product_detail_page_view"

    def test_several_names_one_rule(self):
        """Every name listed in a rule leads to the same type."""
        t = table("rules:\n  - events: [Like, Liked, Heart]\n    type: like\n")
        for name in ("Like", "Liked", "Heart"):
            assert one(t, {"event": name, "userId": "u"})["type"] == "like"

    def test_normalize_name(self):
        """The matching key folds case and separators."""
        assert normalize_name("  Add_To-Cart  ") == "add to cart"

    def test_unknown_event_is_skipped_with_reason(self):
        """An event no rule covers yields nothing and says which event it was."""
        t = table("rules:\n  - events: [Like]\n    type: like\n")
        result = t.translate({"type": "track", "event": "Mystery", "userId": "u"})
        assert result.records == []
        assert result.skipped == "no rule for event 'Mystery'"

    def test_unmatched_custom_emits_custom_with_event_name(self):
        """`unmatched: custom` sends uncovered events as custom, named after the event."""
        t = table("unmatched: custom\nrules:\n  - events: [Like]\n    type: like\n")
        rec = one(t, {"type": "track", "event": "Video Paused", "userId": "u"})
        assert rec == {"type": "custom", "custom_action_name": "Video Paused", "user_id": "u"}

    def test_unmatched_rule_body_can_take_items(self):
        """A rule body under `unmatched` may name an item list for product ids."""
        t = table(
            """
            items:
              p: {from: [properties], product_ids: [product_id]}
            unmatched: {type: custom, items: p}
            rules:
              - events: [Like]
                type: like
            """
        )
        rec = one(t, {"event": "Zoomed", "userId": "u", "properties": {"product_id": 7}})
        assert rec == {
            "type": "custom",
            "custom_action_name": "Zoomed",
            "product_ids": ["7"],
            "user_id": "u",
        }

    def test_calls_match_call_type_not_event_names(self):
        """A track event named like a call type ('delete') never triggers the call rule."""
        t = table(
            """
            rules:
              - calls: [delete]
                skip: user deletion request
                delete: userId
            """
        )
        deletion = t.translate({"type": "delete", "userId": "u1"})
        assert deletion.deletions == ["u1"] and deletion.skipped == "user deletion request"
        track = t.translate({"type": "track", "event": "delete", "userId": "u1"})
        assert track.deletions == [] and track.skipped == "no rule for event 'delete'"

    def test_message_without_name_or_call(self):
        """An object with neither an event name nor a call type is skipped, saying so."""
        t = table("rules:\n  - events: [Like]\n    type: like\n")
        assert t.translate({"userId": "u"}).skipped == "no event name or call type"


PAGES = """
page_views:
  calls: [page]
  path: [properties.path, properties.url]
  fields:
    context.page.url: properties.url
rules:
  - pages: ['^/$']
    type: home_page_view
  - pages: ['^/products/(?P<product_id>[^/?]+)', '^/p/(?P<product_id>\\d+)$']
    type: product_detail_page_view
    fields:
      product_ids: $match.product_id
  - pages: ['^/c/(?P<top>[^/]+)/(?P<sub>[^/]+)']
    type: category_page_view
    fields:
      category: [$match.top]
"""


class TestPages:
    def test_home_page(self):
        """A page call on `/` becomes home_page_view with the page URL in context."""
        rec = one(
            table(PAGES),
            {"type": "page", "userId": "u", "properties": {"path": "/", "url": "https://x.io/"}},
        )
        assert rec == {
            "type": "home_page_view",
            "user_id": "u",
            "context": {"page": {"url": "https://x.io/"}},
        }

    def test_named_capture_becomes_field(self):
        """A named regex capture of the path feeds a Miso field."""
        event = {"type": "page", "anonymousId": "a", "properties": {"path": "/products/sku-9"}}
        assert one(table(PAGES), event) == {
            "type": "product_detail_page_view",
            "anonymous_id": "a",
            "product_ids": ["sku-9"],
        }

    def test_second_pattern_of_a_rule(self):
        """Any pattern of a rule may match; the path may come from a full URL."""
        event = {"type": "page", "userId": "u", "properties": {"url": "https://x.io/p/42?ref=1"}}
        rec = one(table(PAGES), event)
        assert rec["product_ids"] == ["42"]
        assert rec["context"] == {"page": {"url": "https://x.io/p/42?ref=1"}}

    def test_unmatched_path_is_skipped_with_path(self):
        """A page view no pattern covers names its path in the skip reason."""
        result = table(PAGES).translate(
            {"type": "page", "userId": "u", "properties": {"path": "/about"}}
        )
        assert result.records == [] and result.skipped == "no rule for page path '/about'"

    def test_page_views_by_event_name(self):
        """Sources without call types (Mixpanel) declare page-view events by name."""
        header = "version: 1\nevent_name: event\ncommon:\n  user_id: properties.distinct_id\n"
        body = """
        page_views:
          events: [$mp_web_page_view, Page View]
          path: properties.$current_url
        rules:
          - pages: ['^/$']
            type: home_page_view
        """
        t = table(body, header)
        for name in ("$mp_web_page_view", "page view"):
            event = {
                "event": name,
                "properties": {"distinct_id": 5, "$current_url": "https://s.io/?a=1"},
            }
            assert one(t, event) == {"type": "home_page_view", "user_id": "5"}


class TestValues:
    def test_fallback_paths_take_first_present(self):
        """Ordered fallbacks: the first path with a usable value wins."""
        t = table(
            """
            rules:
              - events: [Order Completed]
                type: checkout
                fields:
                  revenue: [properties.revenue, properties.total]
            """
        )
        assert (
            one(t, {"event": "Order Completed", "userId": "u", "properties": {"total": 12.5}})[
                "revenue"
            ]
            == 12.5
        )
        assert (
            one(
                t,
                {
                    "event": "Order Completed",
                    "userId": "u",
                    "properties": {"revenue": 10, "total": 12.5},
                },
            )["revenue"]
            == 10
        )

    def test_unusable_value_falls_through(self):
        """A value that cannot be converted counts as missing, so the next path is tried."""
        t = table(
            """
            rules:
              - events: [Order Completed]
                type: checkout
                fields:
                  revenue: [properties.revenue, properties.total]
            """
        )
        rec = one(
            t,
            {
                "event": "Order Completed",
                "userId": "u",
                "properties": {"revenue": "n/a", "total": "30"},
            },
        )
        assert rec["revenue"] == 30.0

    def test_array_projection(self):
        """`list[].key` collects one value per list item."""
        t = table(
            """
            rules:
              - events: [Cart Viewed]
                type: impression
                fields:
                  product_ids: properties.products[].product_id
            """
        )
        event = {
            "event": "Cart Viewed",
            "userId": "u",
            "properties": {"products": [{"product_id": "a"}, {"x": 1}, {"product_id": 2}]},
        }
        assert one(t, event)["product_ids"] == ["a", "2"]

    def test_constant_and_default(self):
        """`{value: X}` is a constant; `{from: …, default: X}` fills a gap."""
        t = table(
            """
            rules:
              - events: [Rated]
                type: rate
                fields:
                  rating: {from: properties.stars, default: 3}
                  product_ids: {value: [house-special]}
            """
        )
        assert one(t, {"event": "Rated", "userId": "u"}) == {
            "type": "rate",
            "user_id": "u",
            "rating": 3,
            "product_ids": ["house-special"],
        }
        assert (
            one(t, {"event": "Rated", "userId": "u", "properties": {"stars": "4.5"}})["rating"]
            == 4.5
        )

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [("5", 5.0), (4, 4), (" 2.5 ", 2.5), ("five", None), (7, None), (True, None)],
    )
    def test_rating_coercion(self, raw, expected):
        """Ratings become numbers on Miso's 0-5 scale; anything else is omitted."""
        t = table(
            "rules:\n  - events: [R]\n    type: rate\n    fields:\n      rating: properties.r\n"
        )
        rec = one(t, {"event": "R", "userId": "u", "properties": {"r": raw}})
        assert rec.get("rating") == expected

    def test_empty_values_are_omitted(self):
        """Empty strings, empty lists, nulls and empty objects never reach a record."""
        t = table(
            """
            common:
              user_id: userId
              anonymous_id: anonymousId
              context.locale: context.locale
              context.page.url: context.page.url
            rules:
              - events: [S]
                type: search
                fields:
                  search.keywords: properties.query
                  search.filters: properties.filters
            """,
            header="version: 1\nevent_name: event\n",
        )
        event = {
            "event": "S",
            "userId": "u",
            "anonymousId": "",
            "context": {"locale": "  ", "page": {"url": None}},
            "properties": {"query": "", "filters": []},
        }
        assert one(t, event) == {"type": "search", "user_id": "u"}

    def test_page_context_needs_url(self):
        """Miso requires page.url whenever page is sent: a referrer alone is dropped."""
        t = table(
            """
            common:
              user_id: userId
              context.page.referrer: context.page.referrer
              context.locale: context.locale
            rules:
              - events: [L]
                type: like
            """,
            header="version: 1\nevent_name: event\n",
        )
        rec = one(
            t,
            {
                "event": "L",
                "userId": "u",
                "context": {"page": {"referrer": "https://r"}, "locale": "fr"},
            },
        )
        assert rec == {"type": "like", "user_id": "u", "context": {"locale": "fr"}}

    def test_quoted_keys_and_indexes(self):
        """Paths reach keys containing dots or spaces, and list positions."""
        t = table(
            """
            rules:
              - events: [V]
                type: product_detail_page_view
                fields:
                  product_ids:
                    - properties['Product ID']
                    - properties.ids[0]
                  duration: "properties['time.spent']"
            """
        )
        rec = one(
            t,
            {
                "event": "V",
                "userId": "u",
                "properties": {"ids": ["first", "second"], "time.spent": 12},
            },
        )
        assert rec == {
            "type": "product_detail_page_view",
            "user_id": "u",
            "product_ids": ["first"],
            "duration": 12,
        }
        rec = one(t, {"event": "V", "userId": "u", "properties": {"Product ID": "pid"}})
        assert rec["product_ids"] == ["pid"]

    def test_wrong_shapes_in_events_are_tolerated(self):
        """Paths into values of the wrong type read as missing instead of failing."""
        t = table(
            """
            common:
              user_id: userId
              context.locale: context.locale
            items:
              p: {from: [properties.products, properties], product_ids: [product_id]}
            rules:
              - events: [A]
                type: add_to_cart
                items: p
            """,
            header="version: 1\nevent_name: event\n",
        )
        for event in (
            {"event": "A", "userId": "u", "context": "oops", "properties": "text"},
            {"event": "A", "userId": "u", "context": [], "properties": {"products": 5}},
            {"event": "A", "userId": "u", "properties": {"products": [None, 3, []]}},
        ):
            assert one(t, event)["type"] == "add_to_cart"


ITEMS = """
items:
  products:
    from: [properties.products, properties]
    product_ids: [product_id, sku]
    quantities: {from: quantity, default: 1}
rules:
  - events: [Order Completed]
    type: checkout
    items: products
  - events: [Product Viewed]
    type: product_detail_page_view
    items: products
"""


class TestItems:
    def test_parallel_ids_and_quantities(self):
        """Items without an id are dropped together with their quantity."""
        event = {
            "event": "Order Completed",
            "userId": "u",
            "properties": {
                "products": [
                    {"product_id": "a", "quantity": 2},
                    {"name": "no id", "quantity": 9},
                    {"sku": "S-b"},
                    {"product_id": "c", "quantity": "3"},
                ]
            },
        }
        rec = one(table(ITEMS), event)
        assert rec["product_ids"] == ["a", "S-b", "c"]
        assert rec["quantities"] == [2, 1, 3.0]

    def test_single_product_in_properties(self):
        """Without a products list, the properties themselves describe one product."""
        event = {
            "event": "Order Completed",
            "userId": "u",
            "properties": {"sku": "S1", "quantity": 4},
        }
        assert one(table(ITEMS), event) == {
            "type": "checkout",
            "user_id": "u",
            "product_ids": ["S1"],
            "quantities": [4],
        }

    def test_empty_list_falls_back_to_properties(self):
        """A products list with no usable id falls back to the next item source."""
        event = {
            "event": "Order Completed",
            "userId": "u",
            "properties": {"products": [{"name": "x"}], "product_id": "p"},
        }
        assert one(table(ITEMS), event)["product_ids"] == ["p"]

    def test_type_without_quantities_gets_ids_only(self):
        """Only fields the target type allows are emitted from a shared item list."""
        event = {
            "event": "Product Viewed",
            "userId": "u",
            "properties": {"product_id": "p", "quantity": 2},
        }
        assert one(table(ITEMS), event) == {
            "type": "product_detail_page_view",
            "user_id": "u",
            "product_ids": ["p"],
        }

    def test_bad_quantity_takes_default(self):
        """Zero, negative or non-numeric quantities become the default."""
        event = {
            "event": "Order Completed",
            "userId": "u",
            "properties": {
                "products": [
                    {"product_id": "a", "quantity": 0},
                    {"product_id": "b", "quantity": "x"},
                    {"product_id": "c", "quantity": -2},
                    {"product_id": "d", "quantity": True},
                ]
            },
        }
        assert one(table(ITEMS), event)["quantities"] == [1, 1, 1, 1]

    def test_list_of_bare_ids(self):
        """A list of plain ids is a list of items identified by those ids."""
        event = {
            "event": "Order Completed",
            "userId": "u",
            "properties": {"products": ["a", 12, None, ""]},
        }
        rec = one(table(ITEMS), event)
        assert rec["product_ids"] == ["a", "12"] and rec["quantities"] == [1, 1]


class TestIds:
    @pytest.mark.parametrize(
        "placeholder",
        [
            "anonymous",
            "null",
            "None",
            "undefined",
            "0",
            "-1",
            "",
            "  ",
            "00000000-0000-0000-0000-000000000000",
            None,
            True,
        ],
    )
    def test_placeholder_ids_count_as_missing(self, placeholder):
        """Placeholder ids are not ids: a record with only a placeholder is skipped."""
        t = table("rules:\n  - events: [L]\n    type: like\n")
        result = t.translate({"event": "L", "userId": placeholder})
        assert result.records == [] and result.skipped == "no user_id or anonymous_id"

    def test_numeric_ids_become_strings(self):
        """Numbers sent as ids are sent to Miso as strings."""
        t = table("rules:\n  - events: [L]\n    type: like\n")
        assert one(t, {"event": "L", "userId": 42, "anonymousId": 7.0}) == {
            "type": "like",
            "user_id": "42",
            "anonymous_id": "7",
        }

    def test_overlong_user_id_is_dropped(self):
        """A user_id over Miso's 512 characters cannot be sent, so it is missing."""
        t = table("rules:\n  - events: [L]\n    type: like\n")
        rec = one(t, {"event": "L", "userId": "u" * 513, "anonymousId": "a"})
        assert rec == {"type": "like", "anonymous_id": "a"}


class TestLinksAndSkips:
    LINKS = """
    links:
      - user: userId
        anonymous: anonymousId
    rules:
      - calls: [identify]
        skip: identity call
      - calls: [alias]
        skip: identity call
        links:
          - {user: userId, anonymous: previousId}
      - events: [L]
        type: like
    """

    def test_any_event_with_both_ids_links_them(self):
        """A record-producing event carrying both ids also yields the link."""
        result = table(self.LINKS).translate({"event": "L", "userId": "u", "anonymousId": "a"})
        assert result.links == [Link(anonymous_id="a", user_id="u")]
        assert len(result.records) == 1

    def test_unmatched_event_still_teaches_link(self):
        """Links are learned even from events no rule maps."""
        result = table(self.LINKS).translate({"event": "Zzz", "userId": "u", "anonymousId": "a"})
        assert result.records == [] and result.links == [Link("a", "u")]

    def test_skip_rule_with_links(self):
        """A skip rule yields no record but its links, with the rule's reason."""
        result = table(self.LINKS).translate(
            {"type": "alias", "userId": "u2", "previousId": "p", "anonymousId": "a"}
        )
        assert result.records == []
        assert result.skipped == "identity call"
        assert result.links == [Link("a", "u2"), Link("p", "u2")]

    def test_same_id_on_both_sides_is_no_link(self):
        """An id linked to itself teaches nothing."""
        result = table(self.LINKS).translate(
            {"type": "identify", "userId": "x", "anonymousId": "x"}
        )
        assert result.links == []


def test_rule_fields_override_common_fields():
    """A rule's own field wins over the common one of the same name."""
    t = table(
        """
        rules:
          - events: [L]
            type: like
            fields:
              user_id: properties.email
        """
    )
    assert one(t, {"event": "L", "userId": "u", "properties": {"email": "e@x"}})["user_id"] == "e@x"


def test_translator_repr_and_summary():
    """A translator names its file and counts its rules."""
    t = table("rules:\n  - events: [A, B]\n    type: like\n  - calls: [page]\n    type: click\n")
    assert repr(t) == "<Translator test from test.yaml: 2 rules>"
    assert t.event_names == ["a", "b"]
