"""Entry point of a grading worker: ``python -m zppo_jax.rewards._worker READ_FD WRITE_FD``.

Kept apart from `pool` so that running it with ``-m`` does not import the module it runs twice.
"""
import multiprocessing.connection
import resource
import sys

from zppo_jax.rewards.pool import worker_main


def _main(argv: list[str]) -> None:
  """Reads the config from the parent, then serves items until told to stop."""
  recv_conn = multiprocessing.connection.Connection(int(argv[0]), writable=False)
  send_conn = multiprocessing.connection.Connection(int(argv[1]), readable=False)
  config, grade_fn, memory_limit_mb = recv_conn.recv()
  if memory_limit_mb:
    limit = memory_limit_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

  class _Duplex:
    send = staticmethod(send_conn.send)
    recv = staticmethod(recv_conn.recv)

  worker_main(_Duplex(), config, grade_fn)


if __name__ == "__main__":
  _main(sys.argv[1:])
