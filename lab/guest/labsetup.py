"""Putting a lab together: cache, kernel, image, module and accelerator.

:class:`Lab` is what the command line, the benchmarks and the pytest fixtures
use to get a :class:`~lab.guest.machine.GuestSpec`; it builds only what is missing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from lab.guest.accel import Accel, choose_accel
from lab.guest.calibration import lpj_file
from lab.guest.files import guest_program_files
from lab.guest.machine import GuestSpec
from lab.guest.qemu_argv import GuestShape
from lab.host.cache import cache_root
from lab.image.build import GuestImage, build_image
from lab.image.extmod import ExtraModule, build_extra_modules
from lab.image.kernel import KernelSpec, custom_kernel, debian_cloud_kernel
from lab.image.module import ModuleBuild, build_module, kmod_dir

__all__ = ["LabOptions", "Lab"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabOptions:
    """Where the lab keeps things and which kernel and accelerator it uses."""

    cache: Path | None = None
    kernel: Path | None = None
    kbuild: Path | None = None
    kernel_modules: Path | None = None
    accel: str = "auto"
    tcg_threads: str = "auto"  # see lab.guest.accel.tcg_threads_for
    guests_at_once: int = 1  # how many guests of this lab run at the same time
    module_source: Path | None = None  # the lab module's source folder (default: this checkout's kmod/)
    #: Start guests by restoring a saved state of their spec (lab.guest.snapshot); False: cold boots.
    snapshot: bool = True
    extra_modules: tuple[Path, ...] = ()  # folders of extra modules (lab.image.extmod), loaded after cnlab.ko
    #: extra Debian packages for the root disk (lab.image.guest_packages): its own cached variant per list
    packages: tuple[str, ...] = ()
    #: "cloud" (Debian's cloud kernel), "debug" (lab.image.debug_kernel: lockdep, KASAN, kmemleak, ...) or
    #: "kcsan" (the same source with KCSAN, the data-race detector)
    kernel_flavour: str = "cloud"


class Lab:
    """Resolves and builds (lazily, once) everything guests of this lab need."""

    def __init__(self, options: LabOptions | None = None) -> None:
        self.options = options or LabOptions()
        self.cache = (self.options.cache or cache_root()).resolve()
        self._kernel: KernelSpec | None = None
        self._image: GuestImage | None = None
        self._module: ModuleBuild | None = None
        self._extra: tuple[ExtraModule, ...] | None = None
        self._accel: Accel | None = None

    @property
    def kernel(self) -> KernelSpec:
        if self._kernel is None:
            if self.options.kernel is not None:
                self._kernel = custom_kernel(self.options.kernel, self.options.kbuild, self.options.kernel_modules)
            elif self.options.kernel_flavour != "cloud":
                from lab.image.debug_kernel import debug_kernel

                self._kernel = debug_kernel(self.cache, debian_cloud_kernel(self.cache),
                                            flavour=self.options.kernel_flavour)
            else:
                self._kernel = debian_cloud_kernel(self.cache)
        return self._kernel

    @property
    def image(self) -> GuestImage:
        if self._image is None:
            self._image = build_image(self.kernel, self.cache, packages=self.options.packages)
        return self._image

    @property
    def module(self) -> ModuleBuild:
        if self._module is None:
            if self.options.module_source is not None:
                self._module = build_module(self.kernel, self.cache, source=self.options.module_source)
            else:
                self._module = build_module(self.kernel, self.cache)
        return self._module

    def with_module_source(self, source: Path, guests_at_once: int | None = None) -> Lab:
        """A lab like this one whose module is built from ``source`` (a patched copy of ``kmod/``), sharing the
        kernel, image and accelerator this one resolved."""
        import dataclasses

        other = Lab(dataclasses.replace(self.options, module_source=source,
                                        guests_at_once=guests_at_once or self.options.guests_at_once))
        other._kernel, other._image, other._accel = self.kernel, self.image, self.accel
        return other

    @property
    def extra_modules(self) -> tuple[ExtraModule, ...]:
        """The extra modules, built against the lab module, in load order (none without ``extra_modules``)."""
        if self._extra is None:
            self._extra = build_extra_modules(self.kernel, self.cache, self.module,
                                              self.options.module_source or kmod_dir(),
                                              self.options.extra_modules) if self.options.extra_modules else ()
        return self._extra

    @property
    def accel(self) -> Accel:
        if self._accel is None:
            self._accel = choose_accel(self.options.accel, self.cache, self.image.kernel.image,
                                       self.image.initramfs)
            log.info("accelerator: %s (%s)", self._accel.name, self._accel.reason)
        return self._accel

    def accel_for(self, cpus: int) -> Accel:
        """The accelerator, TCG threading chosen, for one guest of ``cpus`` vCPUs of this lab."""
        return self.accel.for_guests(self.options.guests_at_once, cpus, self.options.tcg_threads)

    def guest_spec(self, shape: GuestShape | None = None, name: str = "guest", with_module: bool = True,
                   load_module: bool = True, cmdline: tuple[str, ...] = (), programs: bool = True) -> GuestSpec:
        """A spec for a guest of this lab, with the lab module delivered (and loaded) and, with ``programs``,
        the lab's guest programs in place from its start (``GuestSpec.files``)."""
        modules = (self.module.module("cnlab"), *(m.path for m in self.extra_modules)) if with_module else ()
        shape = shape or GuestShape()
        accel = self.accel_for(shape.cpus)
        files, links = guest_program_files()
        return GuestSpec(
            image=self.image,
            accel=accel,
            # TCG only: under KVM the kernel calibrates fast and right by itself
            calibration=lpj_file(self.cache, self.image.kernel.release) if accel.name == "tcg" else None,
            shape=shape,
            modules=modules,
            load_modules=load_module,
            cmdline=cmdline,
            name=name,
            snapshots=self.cache / "snapshots" if self.options.snapshot else None,
            files=tuple(files) if programs else (),
            links=tuple(links) if programs else (),
        )
