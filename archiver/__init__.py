"""archiver: stream Plangrep job results and artifacts into archives.

Importing this package has no side effects; plugins are loaded by
:func:`archiver.plugins.build_plugin_manager`.
"""

__version__ = "0.1.0"
