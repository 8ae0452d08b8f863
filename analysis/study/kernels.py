"""Warm notebook kernels: one Jupyter kernel per worker, kept alive across the notebooks it executes.

A fresh kernel pays 10-20 s before a notebook's first result (importing torch, transformers, umap, numba's first
compile); the study's notebooks import the same modules, so a worker's kernel runs one notebook after another.
Between two notebooks the user namespace is cleared (`%reset -f`, every figure closed; imported modules stay),
so a notebook cannot see another's variables; after a failure or a timeout the kernel is shut down and the next
notebook starts a new one. Executed notebooks look like papermill's (papermill parameterizes and records them;
only the kernel manager is kept).
"""

from __future__ import annotations

import atexit
import threading
from contextlib import contextmanager
from typing import Iterator

from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, papermill_engines

KERNEL_NAME = "python3"
# run between two notebooks: no figure, no variable survives; the execution counter starts again as in a new kernel;
# thread counts go back to the kernel's share (umap / numba leave torch at every core: a later notebook's model
# ran 8x slower beside the other worker)
RESET = """\
import matplotlib.pyplot as __plt
__plt.close("all")
del __plt
get_ipython().run_line_magic("reset", "-f")
import gc as __gc
__gc.collect()
del __gc
get_ipython().execution_count = 1
import os as __os, sys as __sys
if __os.environ.get("OMP_NUM_THREADS", "").isdigit():  # share_cores' count: a notebook's libraries may have raised it
    __threads = int(__os.environ["OMP_NUM_THREADS"])
    if "torch" in __sys.modules:
        __sys.modules["torch"].set_num_threads(__threads)
    if "threadpoolctl" in __sys.modules:
        __sys.modules["threadpoolctl"].threadpool_limits(limits=__threads)
    del __threads
del __os, __sys
"""


class KeptKernelEngine(NBClientEngine):
    """papermill's nbclient engine on a kernel manager it is given (`km=`), which outlives the notebook."""

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None, stderr_file=None,
                                 start_timeout=60, execution_timeout=None, km=None, **kwargs):
        from papermill.log import logger

        client = PapermillNotebookClient(nb_man, km=km, kernel_name=kernel_name, timeout=execution_timeout,
                                         startup_timeout=start_timeout, log=logger, log_output=log_output,
                                         stdout_file=stdout_file, stderr_file=stderr_file)
        try:
            return client.execute()
        finally:
            atexit.unregister(client._cleanup_kernel)  # it would shut the kept kernel down at exit, holding the nb
            if client.kc is not None:
                client.kc.stop_channels()


papermill_engines.register("cocoa-lens-kept-kernel", KeptKernelEngine)


class WarmKernel:
    """One kernel, started on first use, reused until it fails (`shutdown`; the next use starts another)."""

    ENGINE = "cocoa-lens-kept-kernel"

    def __init__(self):
        self.km = None
        self.started = 0  # kernels started (1 unless one failed)

    def manager(self):
        """The running kernel's manager (started here, with this process's environment: `share_cores`)."""
        if self.km is None or not self.km.is_alive():
            from jupyter_client.manager import KernelManager

            self.shutdown()
            # nbclient drives an asynchronous client (with a blocking one its cell timeout never fires)
            self.km = KernelManager(kernel_name=KERNEL_NAME,
                                    client_class="jupyter_client.asynchronous.AsyncKernelClient")
            self.km.start_kernel()
            self.started += 1
        return self.km

    def reset(self) -> None:
        """Clear the namespace for the next notebook; a kernel that cannot be reset is shut down."""
        if self.km is None:
            return
        from jupyter_client.blocking import BlockingKernelClient

        kc = BlockingKernelClient()
        kc.load_connection_info(self.km.get_connection_info())
        try:
            kc.start_channels()
            kc.wait_for_ready(timeout=60)
            reply = kc.execute_interactive(RESET, store_history=False, timeout=60, output_hook=lambda msg: None)
            ok = reply["content"]["status"] == "ok"
        except Exception:  # noqa: BLE001 - any trouble: a new kernel next time
            ok = False
        finally:
            kc.stop_channels()
        if not ok:
            self.shutdown()

    def shutdown(self) -> None:
        if self.km is not None:
            try:
                self.km.shutdown_kernel(now=True)
            except Exception:  # noqa: BLE001 - already dead
                pass
            self.km = None


class KernelPool:
    """At most one warm kernel per concurrent notebook job; `close()` shuts them all down."""

    def __init__(self):
        self._idle: list[WarmKernel] = []
        self._all: list[WarmKernel] = []
        self._lock = threading.Lock()

    @contextmanager
    def kernel(self) -> Iterator[WarmKernel]:
        with self._lock:
            kernel = self._idle.pop() if self._idle else None
            if kernel is None:
                kernel = WarmKernel()
                self._all.append(kernel)
        try:
            yield kernel
        finally:
            with self._lock:
                self._idle.append(kernel)

    @property
    def started(self) -> int:
        """Kernels started so far (one per worker, plus one per failure)."""
        return sum(k.started for k in self._all)

    def close(self) -> None:
        for kernel in self._all:
            kernel.shutdown()
        self._all.clear()
        self._idle.clear()
