"""Models, the CCC loss and metric, window sampling, the training loop and checkpoints.

`affvx.trainers.job.run_job(spec, job_dir)` is what a worker runs. `spec` and `errors` import
no torch, so planning code can build specs without loading it.
"""
