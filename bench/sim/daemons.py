"""Three ``toogo-reconcile run`` processes, supervised the way systemd would: started, signalled
(SIGKILL, SIGSTOP + SIGCONT, SIGTERM) and restarted after a delay; every generation's stdout and
stderr kept in its own files.

How each exit is judged: after SIGKILL, -9; after SIGTERM, 0 (a graceful stop, even during an
outage); on its own, only exit 1 before ``daemon started`` (e.g. the database was down at start:
systemd restarts it) - anything else is a violation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

TERM_WAIT = 90.0  # seconds a SIGTERM may take: shutdown_timeout plus a lock wait or two
UP_WAIT = 120.0  # seconds a fault waits for its target to be up before it is skipped


@dataclass
class Instance:
    index: int
    config: Path
    env: dict[str, str]
    logdir: Path
    cwd: Path
    violations: list[str]
    restart_delay: float = 1.0
    generation: int = 0
    starts: int = 0
    start_failures: int = 0
    #: output file stems of the generations that failed to start (exit 1 before started)
    failed: set[str] = field(default_factory=set)
    #: seconds from each SIGTERM to the exit
    stop_times: list[float] = field(default_factory=list)
    proc: asyncio.subprocess.Process | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    expect: str | None = None
    stopping: bool = False
    _task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return f"daemon-{self.index}"

    def outputs(self) -> list[Path]:
        return sorted(self.logdir.glob(f"{self.name}.*"))

    def launch(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=self.name)

    async def _supervise(self) -> None:
        while not self.stopping:
            await self._run_once()
            if not self.stopping:
                await asyncio.sleep(self.restart_delay)

    async def _run_once(self) -> None:
        self.generation += 1
        self.starts += 1
        self.started.clear()
        self.exited.clear()
        self.expect = None
        stem = f"{self.name}.{self.generation:03d}"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "daemon",
            "--config",
            str(self.config),
            "run",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
        )
        self.proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        readers = [
            asyncio.create_task(self._copy(proc.stdout, self.logdir / f"{stem}.out", watch=True)),
            asyncio.create_task(self._copy(proc.stderr, self.logdir / f"{stem}.err", watch=False)),
        ]
        rc = await proc.wait()
        await asyncio.gather(*readers)
        self._judge(rc, stem)
        self.exited.set()

    async def _copy(self, stream: asyncio.StreamReader, path: Path, *, watch: bool) -> None:
        with path.open("wb") as out:
            while line := await stream.readline():
                out.write(line)
                if watch and b'"daemon started"' in line:
                    self.started.set()

    def _judge(self, rc: int, stem: str) -> None:
        where = f"{self.name} generation {self.generation}"
        if self.expect == "kill" and rc == -signal.SIGKILL:
            return
        if self.expect == "term":
            if rc != 0:
                self.violations.append(f"{where}: SIGTERM ended it with exit status {rc}, not 0")
            return
        if rc == 1 and not self.started.is_set():
            self.start_failures += 1
            self.failed.add(stem)
            return
        self.violations.append(f"{where}: exited on its own with status {rc}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def up(self, wait: float = UP_WAIT) -> bool:
        """Running and past ``daemon started`` (waits up to ``wait`` seconds)."""
        deadline = asyncio.get_running_loop().time() + wait
        while asyncio.get_running_loop().time() < deadline:
            if self.running() and self.started.is_set():
                return True
            await asyncio.sleep(0.2)
        return False

    async def fault(self, kind: str, param: float) -> bool:
        """Apply one fault; False when the target was not up to receive it."""
        async with self.lock:
            if not await self.up():
                return False
            proc = self.proc
            assert proc is not None
            if kind == "sigstop":
                proc.send_signal(signal.SIGSTOP)
                try:
                    await asyncio.sleep(param)
                finally:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGCONT)
                return True
            self.restart_delay = param
            self.expect = "kill" if kind == "sigkill" else "term"
            proc.send_signal(signal.SIGKILL if kind == "sigkill" else signal.SIGTERM)
            await self._wait_exit(proc)
            return True

    async def _wait_exit(self, proc: asyncio.subprocess.Process) -> None:
        sent = asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(self.exited.wait(), TERM_WAIT)
            if self.expect == "term":
                self.stop_times.append(round(asyncio.get_running_loop().time() - sent, 2))
        except TimeoutError:
            self.violations.append(f"{self.name}: still running {TERM_WAIT:.0f} s after SIGTERM")
            self.expect = "kill"
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await self.exited.wait()

    async def stop(self) -> None:
        """The end of the run: SIGTERM, exit 0 expected; no restart."""
        async with self.lock:
            self.stopping = True
            if self.running():  # starting: let it get up first, then stop it the proper way
                await self.up()
            proc = self.proc
            if proc is not None and proc.returncode is None:
                self.expect = "term" if self.started.is_set() else "kill"
                proc.send_signal(signal.SIGTERM if self.started.is_set() else signal.SIGKILL)
                await self._wait_exit(proc)
        if self._task is not None:
            await self._task

    def kill_now(self) -> None:
        """Cleanup after a failure: no process may outlive the simulation."""
        self.stopping = True
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
                self.proc.kill()


def daemon_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a daemon: ours without any TOOGO_*, credential or notify variable."""
    dropped = ("CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOGO_") and k not in dropped}
    env.update(extra)
    return env
