"""A local web app on a finished run: browse its test images by class and error kind, and try its model (``python -m helpers.app``)."""

from helpers.runtime.entry_points import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "run_view": ("RunFolderError", "RunView", "read_upload"),
    "ui": ("build_app",),
})
