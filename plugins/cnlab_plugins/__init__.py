"""cnlab's built-in plugins (installed as the ``cnlab_plugins`` package).

Each module is an ordinary plugin, loaded by ``lab.plugin.get_plugin_manager``
from ``BUILTIN_PLUGINS`` exactly like a third-party one and blocked with
``-p no:<module>``; ``core`` is essential and cannot be blocked.
"""
