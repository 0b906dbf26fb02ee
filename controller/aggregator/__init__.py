"""The aggregator link (MQTT).

- ``link.py``: ``MqttAggregatorLink``, the asyncio client (aiomqtt over paho-mqtt): connection,
  TLS, Last Will, reconnect, the setpoint subscription, acks and the publishing task;
- ``validation.py``: pure setpoint validation (bytes, retain flag and both clocks in; an accepted
  ``Setpoint`` or a rejection with a reason out);
- ``messages.py``: the payload models, the single source of the wire format and of the JSON
  Schemas shipped in ``schemas/``;
- ``telemetry.py``: pure mapping of control reports to telemetry, status and events;
- ``outbox.py``: the bounded in-memory outbound queue and its drop policy (the durable
  store-and-forward outbox is ``controller/aggregator/durable_outbox.py``);
- ``backoff.py``: the reconnect delays;
- ``disabled.py``: the link for a site without an aggregator.

Topics and payloads are documented for integrators in docs/mqtt.md.
"""
