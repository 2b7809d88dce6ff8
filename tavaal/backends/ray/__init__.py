"""Everything that runs on Ray, in one place (the core and the local backend never import Ray):

backend.py    RayBackend: the stage's heavy steps as Ray jobs (``backend.name: ray``)
train.py      task and VAE training on Ray Train: one TorchTrainer per job, or a kept worker group
job_board.py  the mailbox between the driver and a kept worker group
data.py       pool scoring on Ray Data from the object store
parquet.py    pool scoring on Ray Data straight from a Parquet pool's files
connect.py    connect_ray: a local Ray or a cluster's address, with token authentication
"""
