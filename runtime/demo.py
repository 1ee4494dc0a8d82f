"""`tidal demo`: the unified stream/batch application on a LocalCluster, under each policy.

For each policy a fresh LocalCluster runs workloads/unified.py: the batch job trains a
topic model sweep after sweep (in a driver process of its own), while the stream job cuts
ad events into micro-batches every `interval_ms` and scores each with the latest model.
The stream job also runs alone first, as the baseline. Then it prints one row per policy
(stream latency, batch throughput and makespan, suspensions, work lost), checks the
targets, and writes the report folder (runtime/report.py): report.json, a latency CDF, a
timeline per policy drawn from the scheduler's event log, and index.html.

Every result is checked: each micro-batch against the same query run here, and the
trained model against the other policies' (training is deterministic, so every policy must
produce the same model, however often its tasks were suspended or killed).

Discussion: the batch driver merges each sweep's results and packs the next sweep's
arguments (a few milliseconds of Python holding the GIL now that the partitions' state stays
on the executors; ~100 ms when every document travelled each sweep); in the process that
times stream results, that would show up as stream latency that no scheduler causes. So it
runs in a process of its own, at the executors' batch niceness.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import multiprocessing
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tidal.runtime import report
from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.runtime.stats import percentile
from tidal.scheduler.core import DEFAULT_MAX_SUSPENSIONS
from tidal.workloads.ads import AdSpec, generate_events
from tidal.workloads.broker import BrokerRun, run_stream_broker
from tidal.workloads.topics import Corpus, CorpusSpec, TopicModel, Trainer, make_corpus, resample
from tidal.workloads.unified import StreamRun, run_stream, score_views, train_on

__all__ = ["DemoConfig", "run"]

DEFAULT_POLICIES = ("fifo", "fair", "kill", "lb")
TASKS_PER_EXECUTOR = 4  # batch tasks per executor in each sweep
STREAM_SWITCH_INTERVAL_S = 100e-6  # while the stream runs, in this process (see _drive)

# How a batch driver trains on a cluster: (address, corpus, partitions, sweeps, ready,
# on_sweep) -> (model, makespan in s, the backend's own figures). It calls ready() once
# connected, which returns at the start signal, and on_sweep(model) after every sweep.
TrainFunction = Callable[
    [str, Corpus, int, int, Callable[[], None], Callable[[TopicModel], None]],
    tuple[TopicModel, float, dict[str, Any]],
]


@dataclass(frozen=True)
class DemoConfig:
    policies: tuple[str, ...] = DEFAULT_POLICIES
    executors: int = 2
    duration_s: float = 15.0  # the batch job is sized to about this on an idle cluster
    alone_s: float = 8.0  # the stream-alone baseline
    interval_ms: int = 100  # micro-batch interval
    events_per_s: int = 2000
    task_s: float = 0.3  # target length of one batch task
    seed: int = 0
    out: Path = Path("tidal-report")
    dashboard: bool | str = False  # each cluster's dashboard (LocalCluster(dashboard=...))
    source: str | None = None  # "redis://HOST:PORT": the stream job on a broker

    @property
    def max_suspensions(self) -> int:
        """The cap on each batch task's suspensions, the clusters' `max_suspensions`.

        Discussion: a batch task of `task_s` meets a micro-batch every `interval_ms`, and on
        a loaded machine runs up to 2-3x its length (0.19-0.5 s for 0.3 in `tidal bench
        unified`). With the scheduler's default cap, 3, a task that had met more micro-
        batches than that could not be suspended again, and the next micro-batch waited
        for a batch task to end (40-100 ms, traced 2026-12-07). The cap keeps batch work
        from starving; here a suspension costs a batch task one micro-batch, ~2 ms. So
        the cap allows one suspension for every micro-batch a task of three times
        `task_s` would meet.
        """
        return max(
            DEFAULT_MAX_SUSPENSIONS, math.ceil(round(3 * self.task_s * 1000 / self.interval_ms, 6))
        )

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """A run of well under a minute, for smoke tests and a first look."""
        settings = {"duration_s": 3.0, "alone_s": 2.0, "task_s": 0.15, **overrides}
        return cls(**settings)


@dataclass
class PolicyRun:
    """What one policy's run measured."""

    policy: str
    latencies_ms: list[float]
    batch: dict[str, Any] = field(default_factory=dict)  # from the batch driver
    stream_exact: bool = True
    micro_batches: int = 0
    event_log: str | None = None
    exactly_once: bool | None = None  # on a broker: every view counted once

    def row(self) -> dict[str, Any]:
        """This run's entry in report.json."""
        lat = self.latencies_ms
        return {
            "stream_ms_p50": percentile(lat, 50),
            "stream_ms_p95": percentile(lat, 95),
            "stream_ms_p99": percentile(lat, 99),
            "stream_ms_max": max(lat, default=float("nan")),
            "micro_batches": self.micro_batches,
            "stream_exact": self.stream_exact,
            "exactly_once": self.exactly_once,
            "batch_records_per_s": self.batch.get("records_per_s"),
            "batch_makespan_s": self.batch.get("makespan_s"),
            "batch_records": self.batch.get("records"),
            "suspensions": self.batch.get("suspensions"),
            "work_lost_s": self.batch.get("work_lost_s"),
            "model_digest": self.batch.get("model_digest"),
        }


# ---- sizing ----------------------------------------------------------------------------------


def size_batch_job(config: DemoConfig) -> tuple[CorpusSpec, int, int]:
    """(corpus spec, partitions, sweeps): tasks of about `task_s` on this machine, and
    enough sweeps to keep the executors busy for about `duration_s`."""
    probe = make_corpus(CorpusSpec(documents=60, seed=config.seed))
    trainer = Trainer(probe, 1)
    [part] = trainer.partition_inputs()
    start = time.perf_counter()
    list(resample(part, **trainer.sweep_arguments()))
    per_document = (time.perf_counter() - start) / len(part)
    partitions = config.executors * TASKS_PER_EXECUTOR
    per_task = max(20, round(config.task_s / per_document))
    sweep_s = per_task * per_document * TASKS_PER_EXECUTOR
    sweeps = max(2, round(config.duration_s / sweep_s))
    spec = CorpusSpec(documents=per_task * partitions, seed=config.seed)
    return spec, partitions, sweeps


# ---- the batch driver's process --------------------------------------------------------------


def train_tidal(
    address: str,
    corpus: Corpus,
    partitions: int,
    sweeps: int,
    ready: Callable[[], None],
    on_sweep: Callable[[TopicModel], None],
) -> tuple[TopicModel, float, dict[str, Any]]:
    """The batch job on Tidal: (model, makespan in s, Tidal's own figures)."""
    with Client(address) as client:
        ready()
        stats: list[Any] = []
        start = time.monotonic()

        def each(model: TopicModel, futures: list[Any]) -> None:
            # Their statistics, not the futures: a future held keeps its kept result (a
            # partition's state) on its executor, and train_on frees them all at its end.
            stats.extend(f.statistics() for f in futures)
            on_sweep(model)

        model = train_on(client, corpus, sweeps, partitions, each)
        makespan = time.monotonic() - start
        return (
            model,
            makespan,
            {
                "suspensions": sum(s.suspensions or 0 for s in stats),
                "work_lost_s": sum(s.work_lost_s or 0.0 for s in stats),
                "tasks": len(stats),
            },
        )


def _batch_driver(
    train: TrainFunction, address: str, corpus: Corpus, partitions: int, sweeps: int, conn: Any
) -> None:
    """Run in a child process: `train` on the cluster at `address`, each sweep reported
    down `conn`, after "ready" and a "go" back."""
    try:
        os.nice(10)  # batch work, like the executors' task threads

        def ready() -> None:
            conn.send(("ready",))
            conn.recv()  # go

        def on_sweep(model: TopicModel) -> None:
            conn.send(("sweep", model.sweeps, model.word_topics()))

        model, makespan, figures = train(address, corpus, partitions, sweeps, ready, on_sweep)
        records = len(corpus.documents) * sweeps
        conn.send(
            (
                "done",
                {
                    "makespan_s": makespan,
                    "records": records,
                    "records_per_s": records / makespan,
                    **figures,
                    "model_digest": _digest(model.word_topic),
                },
            )
        )
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise


def _digest(word_topic: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(word_topic).encode()).hexdigest()[:16]


class BatchDriver:
    """The parent's handle on the batch driver process: the latest model, progress, result."""

    def __init__(
        self,
        address: str,
        corpus: Corpus,
        partitions: int,
        sweeps: int,
        train: TrainFunction = train_tidal,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(
            target=_batch_driver,
            args=(train, address, corpus, partitions, sweeps, child_conn),
            name="tidal-demo-batch-driver",
            daemon=True,
        )
        self.sweeps = sweeps
        self.sweeps_done = 0
        self.word_topics: list[int] | None = None
        self.result: dict[str, Any] | None = None
        self.error: str | None = None
        self.finished = threading.Event()
        self._process.start()
        child_conn.close()
        self._expect("ready", timeout=60)
        self._reader = threading.Thread(target=self._read, name="tidal-demo-batch-reader")

    def start(self) -> None:
        self._conn.send(("go",))
        self._reader.start()

    def _expect(self, kind: str, timeout: float) -> tuple[Any, ...]:
        if not self._conn.poll(timeout):
            raise RuntimeError(f"the batch driver did not say {kind!r} within {timeout:.0f} s")
        message = self._conn.recv()
        if message[0] != kind:
            raise RuntimeError(f"the batch driver failed:\n{message[-1]}")
        return message

    def _read(self) -> None:
        try:
            while True:
                message = self._conn.recv()
                if message[0] == "sweep":
                    self.sweeps_done, self.word_topics = message[1], message[2]
                    continue
                if message[0] == "done":
                    self.result = message[1]
                else:
                    self.error = message[1]
                return
        except EOFError:
            self.error = "the batch driver process exited without a result"
        finally:
            self.finished.set()

    def close(self) -> None:
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()


# ---- one run ---------------------------------------------------------------------------------


def run_policy(
    policy: str | None,
    config: DemoConfig,
    corpus: Corpus,
    partitions: int,
    sweeps: int,
    initial_model: list[int],
    on_progress: Callable[[float, str], None],
    announce: Callable[[str], None] | None = None,
) -> PolicyRun:
    """One fresh cluster: the unified application under `policy`, or (None) the stream alone.
    `announce` hears where its dashboard is, if it has one (`config.dashboard`)."""
    name = policy or "stream-alone"
    log_path = config.out / f"events-{name}.jsonl"
    with (
        LocalCluster(
            executors=config.executors,
            policy=policy or "lb",
            max_suspensions=config.max_suspensions,
            event_log=str(log_path),
            dashboard=config.dashboard,
        ) as cluster,
        Client(cluster) as client,
    ):
        if cluster.dashboard_link is not None and announce is not None:
            announce(f"{name}: the dashboard is at {cluster.dashboard_link}")
        batch = (cluster.address, train_tidal) if policy is not None else None
        run = run_unified(
            name, client, batch, config, corpus, partitions, sweeps, initial_model, on_progress
        )
    run.event_log = str(log_path)
    return run


def run_unified(
    name: str,
    client: Any,
    batch: tuple[str, TrainFunction] | None,
    config: DemoConfig,
    corpus: Corpus,
    partitions: int,
    sweeps: int,
    initial_model: list[int],
    on_progress: Callable[[float, str], None],
) -> PolicyRun:
    """The unified application on a running cluster: the stream job from this process
    through `client` (a Tidal client, or anything with its `submit` and `gather`), the
    batch job, if `batch` is `(address, train)`, from a driver process of its own. Results
    are checked before returning, while the cluster still holds them."""
    ads = AdSpec(events_per_s=config.events_per_s, seed=config.seed)
    _warm_up(client, config, ads, corpus, initial_model)
    driver = None
    if batch is not None:
        address, train = batch
        driver = BatchDriver(address, corpus, partitions, sweeps, train)
    try:
        if config.source is not None:
            broker = _drive(client, config, ads, corpus, driver, initial_model, on_progress)
        else:
            stream = _drive(client, config, ads, corpus, driver, initial_model, on_progress)
        if driver is not None:
            driver.finished.wait(600)
            if driver.result is None:
                raise RuntimeError(f"the batch job under {name} failed: {driver.error}")
        if config.source is None:
            client.gather(stream.futures, timeout=120)
    finally:
        if driver is not None:
            driver.close()
    if config.source is not None:  # event-time latencies, and every view counted once
        run = PolicyRun(name, broker.latencies_ms, driver.result if driver else {})
        run.micro_batches = broker.micro_batches
        run.stream_exact = run.exactly_once = broker.exactly_once
        return run
    run = PolicyRun(name, stream.latencies_ms, driver.result if driver else {})
    run.micro_batches = len(stream.futures)
    run.stream_exact = _check_stream(stream, ads)
    return run


def _warm_up(
    client: Client, config: DemoConfig, ads: AdSpec, corpus: Corpus, model: list[int]
) -> None:
    """One micro-batch on every executor first, so that what is measured is the steady
    state, not each executor's first import of the workload's modules. (Stream tasks sent
    together land on different executors: a stream launch needs a free slot.)"""
    events = generate_events(ads, 0, config.interval_ms, corpus.draw_document)
    spec = asdict(ads)
    warm = [
        client.submit(score_views, events, word_topics=model, spec=spec)
        for _ in range(config.executors)
    ]
    client.gather(warm, timeout=60)


def _drive(
    client: Client,
    config: DemoConfig,
    ads: AdSpec,
    corpus: Corpus,
    batch: BatchDriver | None,
    initial_model: list[int],
    on_progress: Callable[[float, str], None],
) -> StreamRun | BrokerRun:
    """Run the stream job: alone for `alone_s`, or for as long as the batch job runs; on
    the broker `config.source` names, if any (workloads/broker.py)."""

    def keep_going(elapsed: float, run: StreamRun | BrokerRun) -> bool:
        p99 = f"stream p99 {percentile(run.latencies_ms, 99):.1f} ms"
        if batch is None:
            on_progress(min(elapsed / config.alone_s, 1.0), p99)
            return elapsed < config.alone_s
        on_progress(batch.sweeps_done, f"sweep {batch.sweeps_done}/{batch.sweeps}, {p99}")
        return not batch.finished.is_set()

    def latest_model() -> list[int]:
        return (batch.word_topics if batch else None) or initial_model

    if batch is not None:
        batch.start()
    # Discussion: this thread draws the next micro-batch (~2 ms of Python) right after
    # submitting one, while the client's I/O thread needs the GIL to send it and to take the
    # result in. With the default 5 ms switch interval the I/O thread can wait that long for
    # it, which is latency no scheduler causes; executors use 100 us for the same reason.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(STREAM_SWITCH_INTERVAL_S)
    # Discussion: a full collection in this process walks everything it holds (the corpus,
    # the imported modules: ~50,000 objects), ~22 ms quiet and 35-60 ms on a loaded machine,
    # with the GIL held, so a stream result that came meanwhile waited for it (the worst
    # micro-batch of the unified benchmark, traced 2026-12-07). What is here now lives until
    # the stream ends and holds no cycles worth finding: out of the collector's way until
    # then, as Python's documentation advises for a long-lived process's set-up data.
    gc.freeze()
    try:
        if config.source is not None:
            return run_stream_broker(
                client, config.source, ads, corpus, config.interval_ms, latest_model, keep_going
            )
        return run_stream(
            client, ads, corpus, config.interval_ms, latest_model, keep_going, keep_inputs=True
        )
    finally:
        sys.setswitchinterval(interval)
        gc.unfreeze()


def source_problem(source: str) -> str | None:
    """What is wrong with a `--source`, or None: a redis:// URL whose server answers, with
    redis-py installed."""
    if not source.startswith(("redis://", "rediss://", "unix://")):
        return f"--source must be a redis://HOST:PORT URL, not {source!r}"
    try:
        import redis
    except ImportError:
        return 'the stream job on Redis needs redis-py: pip install "tidal[streams]"'
    try:
        connection = redis.Redis.from_url(source, socket_connect_timeout=3)
        connection.ping()
        connection.close()
    except (redis.RedisError, ValueError) as exc:
        return f"cannot reach Redis at {source}: {exc}"
    return None


def _check_stream(run: StreamRun, ads: AdSpec) -> bool:
    """Each micro-batch's result equals the same query run here on the same inputs."""
    spec = asdict(ads)
    return len(run.futures) == len(run.events) == len(run.word_topics) and all(
        future.result() == score_views(run.micro_batch_events(i), word_topics, spec)
        for i, (future, word_topics) in enumerate(zip(run.futures, run.word_topics, strict=True))
    )


# ---- the whole demo --------------------------------------------------------------------------


def run(config: DemoConfig, console: Console | None = None) -> dict[str, Any]:
    """Run the baseline and every policy; print the table and targets; write the report."""
    console = console or Console()
    config.out.mkdir(parents=True, exist_ok=True)
    spec, partitions, sweeps = size_batch_job(config)
    corpus = make_corpus(spec)
    initial_model = Trainer(corpus, partitions).model.word_topics()
    console.print(
        f"[bold]Tidal demo[/]: {config.executors} executors; batch job: LDA over "
        f"{spec.documents} documents, {sweeps} sweeps of {partitions} tasks "
        f"(~{config.task_s:.2f} s each); stream job: {config.events_per_s} ad events/s "
        f"in micro-batches every {config.interval_ms} ms."
    )
    runs: dict[str, PolicyRun] = {}
    progress = Progress(
        TextColumn("{task.description:>14}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        refresh_per_second=2,
    )
    with progress:
        for policy in (None, *config.policies):
            name = policy or "stream-alone"
            bar = progress.add_task(name, total=1 if policy is None else sweeps, status="")

            def on_progress(done: float, status: str, bar: Any = bar) -> None:
                progress.update(bar, completed=done, status=status)

            runs[name] = run_policy(
                policy,
                config,
                corpus,
                partitions,
                sweeps,
                initial_model,
                on_progress,
                announce=progress.console.print,
            )
            progress.update(bar, completed=progress.tasks[bar].total, status="done")
    result = summarize(runs, config, spec, sweeps, partitions)
    print_summary(result, console)
    written = report.write_report(config.out, result, runs)
    console.print(f"Report: {written}")
    return result


def summarize(
    runs: dict[str, PolicyRun],
    config: DemoConfig,
    spec: CorpusSpec,
    sweeps: int,
    partitions: int,
) -> dict[str, Any]:
    """report.json's content: the baseline, a row per policy, the targets and the checks."""
    alone = runs["stream-alone"].row()
    policies = {name: r.row() for name, r in runs.items() if name != "stream-alone"}
    digests = {row["model_digest"] for row in policies.values()}
    return {
        "config": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
            "documents": spec.documents,
            "sweeps": sweeps,
            "partitions": partitions,
        },
        "stream_alone": {k: alone[k] for k in ("stream_ms_p50", "stream_ms_p95", "stream_ms_p99")},
        "policies": policies,
        "checks": {
            "stream_results_exact": all(r.stream_exact for r in runs.values()),
            "same_model_under_every_policy": len(digests) == 1,
            # On a broker: every view produced counted once in Redis, under every run.
            **(
                {"exactly_once": all(r.exactly_once for r in runs.values())}
                if config.source is not None
                else {}
            ),
        },
        "targets": targets(alone, policies),
    }


def targets(alone: dict[str, Any], policies: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets for lb, each with its figure and whether it was met."""
    lb, fifo = policies.get("lb"), policies.get("fifo")
    if lb is None:
        return []
    checks = [
        (
            "lb stream p99 <= 1.5x stream-alone p99",
            lb["stream_ms_p99"] / alone["stream_ms_p99"],
            1.5,
            "<=",
        )
    ]
    if fifo is not None:
        checks += [
            (
                "lb stream p99 <= 1/10 of fifo's",
                lb["stream_ms_p99"] / fifo["stream_ms_p99"],
                0.1,
                "<=",
            ),
            (
                "lb batch throughput >= 0.95x fifo's",
                lb["batch_records_per_s"] / fifo["batch_records_per_s"],
                0.95,
                ">=",
            ),
        ]
    return [
        {
            "target": text,
            "ratio": ratio,
            "limit": limit,
            "met": ratio <= limit if op == "<=" else ratio >= limit,
        }
        for text, ratio, limit, op in checks
    ]


def print_summary(result: dict[str, Any], console: Console) -> None:
    table = Table(title="The unified application, per policy")
    columns, rows = report.summary_table(result)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for target in result["targets"]:
        verdict = "[green]met[/]" if target["met"] else "[red]missed[/]"
        console.print(f"  {target['target']}: {target['ratio']:.3f} ({verdict})")
    checks = result["checks"]
    console.print(
        "  stream results: "
        + ("exact" if checks["stream_results_exact"] else "[red]WRONG[/]")
        + "; trained model: "
        + (
            "identical under every policy"
            if checks["same_model_under_every_policy"]
            else "[red]differs between policies[/]"
        )
    )


def parse_policies(text: str) -> Sequence[str]:
    return tuple(p.strip() for p in text.split(",") if p.strip())
