"""The fab's sync with the cloud: labels and daily aggregates up, model deployments down.

`policy` is the one place that builds what leaves the fab; `storage` reads the fab's database;
`collectors` turn it into uploads; `client` talks to the cloud; `deployments` turns a plan into
verified, registered artifacts and assignments; `agent` runs a pass and the periodic loop.
"""
