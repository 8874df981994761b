"""What mlyard deploys, shipped as package data: the deployments (prefect.yaml), the Kubernetes pools' base
job templates, the endpoint and notebook templates, the kustomize base and overlays, the Dockerfiles.
Code reads these files through `mlyard.core.assets`, which finds them through this package wherever mlyard is
installed (a checkout, a wheel in a virtual environment, an image): never as a path beside a checkout."""
