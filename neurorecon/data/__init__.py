"""Raw NSD reading, preparation into the store, and loading of prepared data."""

from .check import check_data
from .design import Design, read_design
from .flatmap import FlatMap, build_flatmap, load_flatmap, save_flatmap
from .layout import NSDLayout
from .preparation import prepare
from .store import FORMAT_VERSION, PreparedStore, PreparedSubject, load_prepared, open_store

__all__ = [
    "FORMAT_VERSION",
    "Design",
    "FlatMap",
    "build_flatmap",
    "NSDLayout",
    "PreparedStore",
    "PreparedSubject",
    "check_data",
    "load_flatmap",
    "load_prepared",
    "open_store",
    "prepare",
    "read_design",
    "save_flatmap",
]
