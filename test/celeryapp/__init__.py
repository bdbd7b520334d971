"""A small Celery app for the integration tests and the demo (Debian's celery 5.2.6).

Run a worker with PYTHONPATH=test /usr/bin/python3 -m celery -A celeryapp.app worker ...
"""
