"""User-facing errors. Every one names the file or value at fault and the fix; the CLI prints it on one line."""


class BenchError(Exception):
    """Base class for errors the CLI reports as one line, without a traceback."""


class DataError(BenchError):
    """Missing/corrupt image, missing LR folder, HR/LR size mismatch, unknown dataset."""


class CheckpointError(BenchError):
    """Wrong, missing or mismatching checkpoint."""


class ConfigError(BenchError):
    """Invalid YAML, unknown model/method/dataset, bad bit-width."""
