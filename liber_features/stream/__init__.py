"""Stream: events from a message broker (NATS JetStream, Redis Streams, Kafka) into the ledger, exactly once.

``source`` is the broker interface, ``brokers`` parses broker URLs, ``nats_source``, ``redis_source`` and
``kafka_source`` are the thin adapters on the brokers' own clients, ``connect`` picks one for a URL, ``messages`` turns
messages into rows under the file ingest's field rules, ``consumer`` is the loop (one ledger
transaction per batch, then the ack), ``flusher`` pushes changed caches online, ``producer``
publishes an event file for demos, benchmarks and tests.
"""
