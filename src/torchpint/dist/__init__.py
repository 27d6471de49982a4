"""Running torchpint over torch.distributed: launching and supervising workers."""

from torchpint.dist.launch import WorkerError, free_port, init_from_env, launched_by_torchrun, run_workers

__all__ = ["WorkerError", "free_port", "init_from_env", "launched_by_torchrun", "run_workers"]
