# Sourced by the ops/ scripts: run from the repository, with .env's values for what the
# environment does not already set (as `python -m ops.stack` does), and the venv's Python.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -f .env ]; then
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in ''|'#'*) continue ;; esac
    key=$(printf '%s' "${line%%=*}" | tr -d '[:space:]')
    value=${line#*=}
    value=${value%\"}; value=${value#\"}; value=${value%\'}; value=${value#\'}
    case "$key" in ''|*[!A-Za-z0-9_]*) continue ;; esac
    if [ -z "${!key+x}" ]; then export "$key=$value"; fi
  done < .env
fi
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || { echo "$PY not found: run \`make bootstrap\` first" >&2; exit 2; }
