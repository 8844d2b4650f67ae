"""What a benchmark ran on, stored beside its numbers."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any


def describe_machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "loadavg": os.getloadavg()[0],
    }
