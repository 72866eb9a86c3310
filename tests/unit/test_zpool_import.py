"""Reading `zpool import`'s listing of exported pools (what `pool.import_find` answers)."""
from __future__ import annotations

from middlewared_plugin.zfs import ImportablePool
from middlewared_plugin.zfs.commands import _importable

ZPOOL_IMPORT_LISTING = """\
   pool: tank
     id: 5571830764813710860
  state: ONLINE
 action: The pool can be imported using its name or numeric identifier.
 config:

        tank        ONLINE
          sdb       ONLINE

   pool: tank
     id: 12
  state: DEGRADED
status: One or more devices are missing from the system.
 config:

        tank        DEGRADED
          sdc       UNAVAIL
"""


def test_zpool_import_listing_gives_every_pool_with_its_guid_even_when_names_repeat():
    assert _importable(ZPOOL_IMPORT_LISTING) == [
        ImportablePool("tank", "5571830764813710860", "ONLINE"),
        ImportablePool("tank", "12", "DEGRADED"),
    ]


def test_nothing_to_import_is_an_empty_listing():
    assert _importable("") == []
    assert _importable("no pools available to import\n") == []
