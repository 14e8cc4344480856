"""What the tests and the benchmarks share: real brokers started as processes (Apache Kafka,
tansu, Mosquitto), the scenario profiles, and the decision-quality simulator with its peer
baselines. Neither tests/ nor benchmarks/ imports the other; both import this package.
"""
