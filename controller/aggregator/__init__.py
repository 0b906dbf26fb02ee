"""The aggregator link (MQTT).

- ``link.py``: ``MqttAggregatorLink``, the asyncio client (aiomqtt over paho-mqtt): connection,
  Last Will, reconnect, the setpoint subscription, the receive and publish loops; it composes:
- ``tracker.py``: ``SetpointTracker``, sans-IO: setpoint payloads and control reports in, acks
  and audit lines out (which setpoint is current, which await their ack);
- ``sender.py``: ``Sender``, what is published and where it waits (the in-memory outbox or the
  durable one), the publish window and the deletes, the audit sink;
- ``tls.py``: the TLS context, the password file, the handshake checked before connecting;
- ``client.py``: the aiomqtt client for one connection, its log and its errors as text;
- ``topics.py``: the topic names under the configured prefix;
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
