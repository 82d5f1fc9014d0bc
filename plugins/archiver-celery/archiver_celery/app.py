"""The Celery app: one task, ``archiver.archive_job(job_id)``, and the settings it needs.

Fixed settings, and why:

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only once
  its job is done, so a worker killed mid-job (``kill -9``, OOM) gives the message back.
* ``worker_prefetch_multiplier = 1``: a worker holds one message per process; a job can
  take hours (a 10 GiB artifact) and must not sit behind it while others idle.
* No result backend (``task_ignore_result``): the ledger is the result.
* ``worker_cancel_long_running_tasks_on_connection_loss = False``: a broker blip must not
  cancel a download that is almost done; the ledger's lease, not the broker, decides who
  works on a job, so a redelivered message finds the job leased and does nothing.
* ``broker_connection_max_retries = None``: workers wait for the broker to come back.
* JSON only, and the only argument is a job id: secrets never travel through the broker.
* Priorities: RabbitMQ queues are declared with ``x-max-priority`` 10 (9 is the highest);
  Redis emulates them with ten lists (``priority_steps``), where 0 is the highest.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from archiver.errors import ConfigError

from .settings import CeleryConfig

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger("archiver.celery")

ENV = "ARCHIVER_CONFIG"
TASK = "archiver.archive_job"
LEVELS = 10


def priority(transport: str, urgent: bool) -> int:
    """The message priority of a job: the highest for urgent ones, the lowest otherwise."""
    if transport == "redis":  # kombu's Redis emulation: 0 is consumed first
        return 0 if urgent else LEVELS - 1
    return LEVELS - 1 if urgent else 0


def settings_for(config: CeleryConfig) -> dict[str, Any]:
    """Celery settings for ``config`` (see the module doc)."""
    conf: dict[str, Any] = {
        "broker_url": config.broker_url.get_secret_value(),
        "result_backend": None,
        "task_ignore_result": True,
        "task_store_errors_even_if_ignored": False,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_connection_timeout": config.connect_timeout,
        "task_default_queue": config.queue,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "worker_max_tasks_per_child": config.max_tasks_per_child,
        "task_queue_max_priority": LEVELS,
        "task_default_priority": priority(config.transport, False),
    }
    if config.max_memory_per_child is not None:
        conf["worker_max_memory_per_child"] = int(config.max_memory_per_child) // 1024  # KiB
    if config.transport == "redis":
        conf["broker_transport_options"] = {
            "visibility_timeout": config.visibility_timeout,
            "priority_steps": list(range(LEVELS)),
            "sep": ":",
            "queue_order_strategy": "priority",
            "socket_connect_timeout": config.connect_timeout,
        }
    return conf


def make_app(config: CeleryConfig, *, config_file: str | None = None) -> Celery:
    """A Celery app for ``config``; with ``config_file`` its workers archive the jobs
    (the task and the worker signals are attached), without it the app only sends."""
    from celery import Celery
    from kombu import Queue

    app = Celery("archiver", set_as_current=False)
    app.conf.update(settings_for(config))
    app.conf.task_queues = [Queue(config.queue, routing_key=config.queue,
                                  queue_arguments={"x-max-priority": LEVELS})]
    from . import tasks
    tasks.register(app, config_file)
    return app


_default: Celery | None = None


def default_app() -> Celery:
    """The app of ``celery -A archiver_celery``: the config file named by
    ``ARCHIVER_CONFIG``, which must set ``dispatch.mode: celery``."""
    global _default
    if _default is None:
        config_file = os.environ.get(ENV)
        if not config_file:
            raise ConfigError(f"{ENV} is not set: name the archiver config file, e.g. "
                              f"{ENV}=/etc/archiver/archiver.yaml celery -A archiver_celery "
                              "worker")
        _default = make_app(worker_config(config_file), config_file=config_file)
    return _default


def worker_config(config_file: str) -> CeleryConfig:
    """The ``celery:`` options of ``config_file`` (ConfigError when it is not set up for
    Celery)."""
    from archiver.runtime import load_config_file

    _, loaded = load_config_file(config_file)
    built = loaded.dispatcher
    if built is None or not isinstance(built.config, CeleryConfig):
        raise ConfigError(f"{config_file}: dispatch.mode is "
                          f"{loaded.settings.dispatch.mode!r}: Celery workers need "
                          "dispatch.mode: celery and a celery: section with broker_url")
    return built.config
