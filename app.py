"""The voice demo: `python app.py [--model DIR] [--host 127.0.0.1] [--port 7860] [--share]`.

The same as `speech-transformer demo`; see docs/demo.md.
"""

import sys

from speech_transformer.apps.demo import main

if __name__ == "__main__":
    sys.exit(main())
