"""Messaging: how results leave the station and commands reach it - the durable outbox, the MQTT link and
its topics, the command router, the documents it publishes (results, alarms, health) and Home Assistant
discovery. Every payload follows a schema in `isic_station/schemas/`.
"""
