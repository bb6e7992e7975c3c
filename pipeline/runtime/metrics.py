"""Every Beam metric the pipeline reports lives in one namespace, named here."""

from apache_beam.metrics import Metrics

NAMESPACE = "level_analytics"


def counter(name: str):
    return Metrics.counter(NAMESPACE, name)


def distribution(name: str):
    return Metrics.distribution(NAMESPACE, name)


def gauge(name: str):
    return Metrics.gauge(NAMESPACE, name)
