"""`python -m affvx.orchestrator.supervise RUN [OPTIONS_JSON]`: drive a run in the
background (what `affvx launch --detach` starts for a backend that needs a local supervisor);
OPTIONS_JSON holds the launch's backend options."""

import json
import sys
from pathlib import Path

from affvx.orchestrator.launch import supervise

if __name__ == "__main__":
    options = json.loads(sys.argv[2]) if len(sys.argv) > 2 else None
    sys.exit(supervise(Path(sys.argv[1]), options))
