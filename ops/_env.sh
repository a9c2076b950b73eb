# Sourced by the ops/ scripts. They parse no .env themselves: they call the `video-tasks`
# CLI, which reads the settings (the environment over .env) like every other entry point.
# The checkout's .venv first, else `video-tasks` on PATH (an installed package).
_ops_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VT=${VIDEO_TASKS:-$_ops_dir/../.venv/bin/video-tasks}
[ -x "$VT" ] || VT=$(command -v video-tasks || true)
[ -n "$VT" ] || { echo "video-tasks not found: run \`make bootstrap\` first" >&2; exit 2; }
