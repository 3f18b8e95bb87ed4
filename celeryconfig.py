"""Celery settings, every value from `Settings`; no logic. Tuned for long LLM tasks."""

from settings import Settings as _Settings

_settings = _Settings.from_env()

broker_url = _settings.redis_url  # credentials merged in; Celery and Flower print it with the password masked
# For rediss://: the CA, client certificate and verification of REDIS_TLS_* (without it kombu would not verify).
broker_use_ssl = _settings.redis.client_options() or None
broker_connection_retry_on_startup = True
broker_transport_options = {
    # Above the hard time limit: a live job is never delivered twice. A dead worker's job is re-run
    # much sooner by the events process's sweeper (job leases), not by this timeout.
    "visibility_timeout": _settings.visibility_timeout_s,
    "socket_connect_timeout": 5,
    "socket_timeout": 30,
    "health_check_interval": 10,
}
task_default_queue = _settings.queue
task_create_missing_queues = True
task_acks_late = True
# The lease sweeper re-runs a job whose worker died, as the next attempt; a rejected message would run it twice.
task_reject_on_worker_lost = False
task_ignore_result = True
result_backend = None
task_soft_time_limit = _settings.soft_time_limit_s
task_time_limit = _settings.hard_time_limit_s
worker_prefetch_multiplier = 1
worker_send_task_events = True
worker_hijack_root_logger = False
worker_redirect_stdouts = False
worker_max_tasks_per_child = 1000
worker_cancel_long_running_tasks_on_connection_loss = False
accept_content = ["json"]
task_serializer = "json"
timezone = "UTC"
