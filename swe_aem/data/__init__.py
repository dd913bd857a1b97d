"""SWE-bench-schema instances: the local suite, local files, the hub."""

from swe_aem.data.instances import DatasetError, Instance
from swe_aem.data.load import load_instances

__all__ = ["DatasetError", "Instance", "load_instances"]
