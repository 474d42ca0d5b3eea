#!/bin/sh
# Install what the tests need from PyPI when it is missing: `openapi-spec-validator` (the
# reference OpenAPI 3.1 validator the director's and the entry servers' documents are checked
# with). Uses the machine's python3 and pip; installs for the current user when not root.
set -eu
if python3 -c 'import openapi_spec_validator' 2>/dev/null; then
    echo "python-deps: all present"
    exit 0
fi
echo "python-deps: installing openapi-spec-validator"
if [ "$(id -u)" = 0 ]; then
    python3 -m pip install --quiet --root-user-action=ignore 'openapi-spec-validator==0.9.0'
else
    python3 -m pip install --quiet --user 'openapi-spec-validator==0.9.0'
fi
python3 -c 'import openapi_spec_validator' && echo "python-deps: ok"
