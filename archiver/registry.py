"""Component registries filled through the ``archiver_register_*`` hooks."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import PluginError

# "section": a plugin-owned top-level YAML section (archiver_register_sections).
KINDS = ("source", "transform", "sink", "dispatcher", "section")


@dataclass
class Registry:
    """Component classes by kind and name, with the plugin that registered each."""

    classes: dict[str, dict[str, type]] = field(default_factory=lambda: {k: {} for k in KINDS})
    owners: dict[tuple[str, str], str] = field(default_factory=dict)

    def register(self, kind: str, cls: type, plugin: str) -> None:
        name = getattr(cls, "name", "")
        if not name:
            raise PluginError(f"plugin {plugin!r} registered a {kind} class {cls.__qualname__} "
                              "without a 'name'")
        if name in self.classes[kind]:
            other = self.owners[(kind, name)]
            raise PluginError(f"{kind} type {name!r} is registered twice: by plugin {other!r} "
                              f"and by plugin {plugin!r}; uninstall or disable one "
                              "(ARCHIVER_DISABLE_PLUGINS)")
        self.classes[kind][name] = cls
        self.owners[(kind, name)] = plugin

    def get(self, kind: str, name: str) -> type:
        try:
            return self.classes[kind][name]
        except KeyError:
            known = ", ".join(sorted(self.classes[kind])) or "none"
            hint = INSTALL_HINTS.get((kind, name))
            msg = f"unknown {kind} type {name!r} (known: {known})"
            if hint:
                msg += f"; install it with: {hint}"
            raise PluginError(msg) from None

    def owner(self, kind: str, name: str) -> str:
        return self.owners[(kind, name)]


INSTALL_HINTS = {
    ("sink", "s3"): "pip install -e plugins/archiver-s3  (distribution 'archiver-s3')",
    ("sink", "gcs"): "pip install -e plugins/archiver-gcs  (distribution 'archiver-gcs')",
    ("dispatcher", "celery"): "pip install -e plugins/archiver-celery  (distribution "
                              "'archiver-celery')",
}
