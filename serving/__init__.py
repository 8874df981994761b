"""The model server runtime every endpoint replica runs (Open Inference Protocol v1/v2, OpenAI and Azure
routes, batching, statistics), the compiled model runtime batch inference shares, the endpoint
gateway and the replica supervisor. Pure: imports no Prefect. See serving/README.md.
"""
