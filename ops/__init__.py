"""Operations: the `video-tasks` command line and the local stack, one module per job.

- cli: the one command line (`video-tasks`, `python -m service`).
- stack: the local stack put together (up, down, status; private stacks on free ports).
- postgres, bouncer, apps: the stack's PostgreSQL cluster, PgBouncer, API and worker.
- ports: every listener, checked before anything starts.
- procs: the one spawner of `video-tasks COMMAND`, pid files, /proc children.
- layout: STACK_DIR and the user the servers run as.
- provision: roles, database and PgBouncer's auth lookup (also for compose).
"""
