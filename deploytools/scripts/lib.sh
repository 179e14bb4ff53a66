# deploytools host library: the functions every remote script calls (see deploytools/layout.py).
#
# A script is this file, then `root=...`, then calls whose every argument is quoted. It reports
# on stdout with `emit KEY VALUE` lines (one line each, parsed by layout.HostState and friends)
# and fails with one of the codes in layout.Code, its message on stderr. Work a script has done
# is undone by its own EXIT trap when it fails (`undo`): a lock it took is released, a partial
# release it unpacked is removed. POSIX sh only; GNU or BusyBox coreutils.

set -u
umask 022
on_failure=:
trap 'status=$?; if [ "$status" -ne 0 ]; then eval "$on_failure"; fi; exit "$status"' EXIT
fail() { code=$1; shift; printf '%s\n' "$*" >&2; exit "$code"; }
emit() { printf '%s\t%s\n' "$1" "$2"; }
undo() { on_failure="$1; $on_failure"; }
now_ms() {
  ms=$(date +%s%3N 2>/dev/null)
  case $ms in *N|'') echo $(( $(date +%s) * 1000 )) ;; *) echo "$ms" ;; esac
}
replace_path() {
  # rename(2) of $1 over $2: atomic; GNU mv -T, else Python's os.replace
  mv -T -- "$1" "$2" 2>/dev/null ||
    python3 -c 'import os, sys; os.replace(sys.argv[1], sys.argv[2])' "$1" "$2"
}
write_private() {
  # write_private FILE TEXT: FILE holds TEXT and nothing else, mode 0600, replaced atomically
  (umask 077 && printf '%s\n' "$2" > "$1.tmp.$$") && mv -f -- "$1.tmp.$$" "$1" ||
    { rm -f -- "$1.tmp.$$"; fail 1 "cannot write $1"; }
}
sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum -- "$1" | cut -d' ' -f1
  else python3 -c 'import hashlib, sys
print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"
  fi
}
need_root() {
  [ -d "$root" ] || fail 64 "the deploy root $root does not exist: run 'invoke setup'"
  { [ -d "$root/releases" ] && [ -d "$root/shared" ]; } ||
    fail 64 "$root has no releases/ or shared/: run 'invoke setup'"
  abs=$(cd -- "$root" && pwd -P) || fail 64 "cannot enter the deploy root $root"
}
setup_layout() {
  why=$(mkdir -p -- "$root/releases" 2>&1 && mkdir -p -- "$root/shared" 2>&1) ||
    fail 1 "cannot create the layout under $root: ${why#mkdir: }"
}
make_shared_dir() {
  why=$(mkdir -p -- "$root/shared/$1" 2>&1) || fail 1 "cannot create $root/shared/$1: ${why#mkdir: }"
}

# -- the deploy lock: deploy.lock/ (mkdir is atomic), token = ownership, owner.json = who -----
take_lock() {
  # take_lock TOKEN OWNER_JSON
  lock_token=$1
  if ! mkdir -- "$root/deploy.lock" 2>/dev/null; then
    [ -d "$root/deploy.lock" ] ||
      fail 1 "cannot create $root/deploy.lock: $(mkdir -- "$root/deploy.lock" 2>&1)"
    if own_lock "$1"; then write_private "$root/deploy.lock/owner.json" "$2"; return 0; fi
    # a deploy that has just made the directory writes owner.json next: wait for it (2 s at
    # most), so the refusal can name the owner
    waited=0
    while [ -d "$root/deploy.lock" ] && [ ! -s "$root/deploy.lock/owner.json" ] &&
      [ "$waited" -lt 20 ]; do
      sleep 0.1 2>/dev/null || sleep 1
      waited=$((waited + 1))
    done
    show_lock
    exit 65
  fi
  undo release_own_lock
  write_private "$root/deploy.lock/token" "$1"
  write_private "$root/deploy.lock/owner.json" "$2"
}
own_lock() { [ "$(cat -- "$root/deploy.lock/token" 2>/dev/null)" = "$1" ]; }
hold_lock() {
  # hold_lock TOKEN OWNER_JSON: a later phase proves the lock is still ours and records its phase
  lock_token=$1
  own_lock "$1" || fail 73 "the deploy lock on $root is no longer held by this deploy (was it removed with 'invoke lock.release'?)"
  write_private "$root/deploy.lock/owner.json" "$2"
}
take_over_lock() {
  # take_over_lock OLD_TOKEN NEW_TOKEN OWNER_JSON: recovery replaces a dead owner's lock
  if [ -d "$root/deploy.lock" ] && [ "$(cat -- "$root/deploy.lock/token" 2>/dev/null)" != "$1" ]; then
    show_lock; exit 65
  fi
  mkdir -p -- "$root/deploy.lock" || fail 1 "cannot create $root/deploy.lock"
  write_private "$root/deploy.lock/token" "$2"
  write_private "$root/deploy.lock/owner.json" "$3"
  lock_token=$2
}
release_own_lock() { if own_lock "$lock_token"; then rm -rf -- "$root/deploy.lock"; fi; }
release_lock() { lock_token=$1; release_own_lock; }
show_lock() {
  [ -d "$root/deploy.lock" ] || return 0
  emit lock "$(cat -- "$root/deploy.lock/owner.json" 2>/dev/null | head -n 1)"
  emit lock_token "$(cat -- "$root/deploy.lock/token" 2>/dev/null)"
  runner_alive && emit runner "$runner_pid"
  return 0
}
break_lock() {
  if [ -d "$root/deploy.lock" ]; then
    show_lock
    rm -rf -- "$root/deploy.lock" || fail 1 "cannot remove $root/deploy.lock"
  fi
}

# -- reading a host --------------------------------------------------------------------------
read_state() {
  # read_state N: root, current, complete releases, the last N revisions
  emit root "$(cd -- "$root" && pwd -P)"
  emit current "$(readlink -- "$root/current" 2>/dev/null)"
  for dir in "$root"/releases/*; do
    [ -f "$dir/.release.json" ] && emit release "${dir##*/}"
  done
  if [ -f "$root/revisions.jsonl" ]; then
    tail -n "$1" -- "$root/revisions.jsonl" | awk '{ print "revision\t" $0 }'
  fi
  return 0
}
read_manifest() {
  # the manifest of the release `current` points to: what the delta upload can reuse
  link=$(readlink -- "$root/current" 2>/dev/null) || return 0
  [ -f "$root/$link/.release.json" ] && emit manifest "$(head -n 1 -- "$root/$link/.release.json")"
  return 0
}
probe_python() {
  # probe_python PYTHON: the version environments are built from, and whether uv is here
  version=$("$1" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null) ||
    fail 68 "deploy.venv_python '$1' does not run on this host: install python3 (with venv) or set deploy.venv_python"
  emit venv_python "$version"
  emit uv "$(command -v uv 2>/dev/null)"
}
digest_dir() {
  # digest_dir DIR: one sha256 over the names and contents of the files in DIR (wheelhouses)
  if [ -d "$1" ]; then
    emit wheels "$1	$(cd -- "$1" && find . -type f | LC_ALL=C sort | while IFS= read -r f; do
      printf '%s %s\n' "$(sha256_of "$f")" "$f"; done | sha256sum | cut -d' ' -f1)"
  else
    emit wheels "$1	missing"
  fi
}
check_absent() {
  [ ! -e "$root/releases/$1" ] || fail 66 "release $1 already exists in $root/releases"
}
check_space() {
  avail=$(df -Pk -- "$root/releases" 2>/dev/null | awk 'NR == 2 { print $4 }')
  if [ -n "$avail" ] && [ "$avail" -lt "$1" ]; then
    fail 67 "only $avail KiB free under $root/releases; the release needs $1 KiB"
  fi
}
check_shared_file() {
  [ -e "$root/shared/$1" ] ||
    fail 69 "shared file $root/shared/$1 is missing (deploy.shared_files): create it on the host"
}

# -- a release: unpacked under releases/.partial-<id>, renamed when complete ------------------
begin_release() {
  release=$1
  archive="$root/releases/.partial-$1.archive"  # the files to send (all, or the delta)
  plan="$root/releases/.partial-$1.plan"        # a small tar: manifest.json, REVISION, lists
  partial="$root/releases/.partial-$1"
  meta="$root/releases/.partial-$1.meta"
}
discard_partial() { rm -rf -- "$partial" "$archive" "$plan" "$meta"; }
check_sha256() {
  actual=$(sha256_of "$1") || fail 1 "cannot read the uploaded $1"
  [ "$actual" = "$2" ] ||
    fail 70 "the uploaded $1 has sha256 $actual, expected $2: the upload was corrupted"
}
unpack() {
  # unpack SHA256 COMPRESSION PLAN_SHA256 [PREVIOUS]: the archive over hard links of the
  # files of release PREVIOUS (the delta upload), as the plan says
  undo discard_partial
  check_sha256 "$archive" "$1"
  check_sha256 "$plan" "$3"
  rm -rf -- "$partial" "$meta" && mkdir -- "$meta" || fail 1 "cannot create $meta"
  tar --no-same-owner -xzf "$plan" -C "$meta" || fail 1 "cannot unpack the upload plan $plan"
  if [ -n "${4:-}" ] && [ -f "$root/releases/$4/.release.json" ]; then
    # releases never change after the switch, so the new one may share their files
    cp -al -- "$root/releases/$4" "$partial" 2>/dev/null || {
      rm -rf -- "$partial"; cp -a -- "$root/releases/$4" "$partial"; } ||
      fail 1 "cannot copy release $4 into $partial"
    emit reused "$4"
    if [ -s "$meta/remove" ]; then
      (cd -- "$partial" && tr '\n' '\0' < "$meta/remove" | xargs -0 rm -rf --) ||
        fail 1 "cannot remove changed files from $partial"
    fi
  else
    mkdir -- "$partial" || fail 1 "cannot create $partial"
  fi
  tar --no-same-owner -x"$2"f "$archive" -C "$partial" ||
    fail 1 "unpacking the release into $partial failed"
  rm -f -- "$archive" "$plan"
}
repair() {
  # repair SHA256 COMPRESSION: the files that did not verify, sent again
  undo discard_partial
  { [ -d "$meta" ] && [ -d "$partial" ]; } || fail 1 "no partial release $partial to repair"
  check_sha256 "$archive" "$1"
  (cd -- "$partial" && tar -t"$2"f "$archive" | tr '\n' '\0' | xargs -0 rm -f -- 2>/dev/null)
  tar --no-same-owner -x"$2"f "$archive" -C "$partial" ||
    fail 1 "unpacking the repaired files into $partial failed"
  rm -f -- "$archive"
}
verify_release() {
  # every file and link as the manifest says, nothing else; a file that does not verify is
  # named (`mismatch PATH`) and the script fails with 74, so the client sends it again
  cd -- "$partial" || fail 1 "cannot enter $partial"
  find . \( -type f -o -type l \) -print | sed 's|^\./||' | LC_ALL=C sort > "$meta/present"
  LC_ALL=C comm -23 "$meta/present" "$meta/paths" | tr '\n' '\0' | xargs -0 rm -f --
  bad=$(
    if command -v sha256sum >/dev/null 2>&1; then
      sha256sum -c --quiet "$meta/sums" 2>/dev/null | sed -n 's/: FAILED.*$//p'
    else
      python3 -c 'import hashlib, sys
for line in open(sys.argv[1], encoding="utf-8"):
    digest, path = line.rstrip("\n").split("  ", 1)
    try:
        ok = hashlib.sha256(open(path, "rb").read()).hexdigest() == digest
    except OSError:
        ok = False
    if not ok:
        print(path)' "$meta/sums"
    fi
    while IFS= read -r path; do [ -x "$path" ] || printf '%s\n' "$path"; done < "$meta/executable"
    while IFS= read -r path && IFS= read -r target; do
      { [ -L "$path" ] && [ "$(readlink -- "$path")" = "$target" ]; } || printf '%s\n' "$path"
    done < "$meta/links"
  )
  cd -- "$abs" || fail 1 "cannot enter $abs"
  if [ -n "$bad" ]; then
    printf '%s\n' "$bad" | LC_ALL=C sort -u | while IFS= read -r path; do emit mismatch "$path"; done
    on_failure=:  # keep the partial release: the client sends the files named, then repair
    fail 74 "files did not verify against the manifest"
  fi
}
finish_unpack() {
  # the manifest becomes .release.json; REVISION; never write through a hard link
  rm -f -- "$partial/.release.json" "$partial/REVISION" &&
    mv -f -- "$meta/manifest.json" "$partial/.release.json" &&
    mv -f -- "$meta/REVISION" "$partial/REVISION" ||
    fail 1 "cannot write $partial/.release.json"
  rm -rf -- "$meta"
}
link_shared() {
  # link_shared PATH LINK_TARGET dir|file : replace PATH in the release by a relative link
  [ "$3" = dir ] && make_shared_dir "$1"
  mkdir -p -- "$(dirname -- "$partial/$1")" && rm -rf -- "$partial/$1" &&
    ln -s -- "$2" "$partial/$1" || fail 1 "cannot link shared/$1 into the release"
}
publish() {
  [ ! -e "$root/releases/$release" ] || fail 66 "release $release already exists in $root/releases"
  mv -- "$partial" "$root/releases/$release" || fail 1 "cannot rename $partial to releases/$release"
}
remove_release() { rm -rf -- "$root/releases/$1" && emit removed "$1"; }

# -- the release's Python environment: shared/venvs/<hash>, complete once .complete exists -----
build_env() {
  # build_env HASH LOCK_FILE KIND INSTALLER VENV_PYTHON [INSTALL_ARGS...]
  hash=$1; lock_file=$2; kind=$3; installer=$4; venv_python=$5; shift 5
  env_dir="$root/shared/venvs/$hash"
  if [ -f "$env_dir/.complete" ]; then
    emit env "reused $hash"
  else
    started=$(now_ms)
    rm -rf -- "$env_dir" && mkdir -p -- "$root/shared/venvs" ||
      fail 1 "cannot prepare $env_dir"
    # the installers' scratch space beside the environment, not in the host's /tmp: an
    # interrupted install leaves nothing there (clean_envs removes it with the environment)
    work="$root/shared/venvs/.tmp-$hash"
    rm -rf -- "$work" && mkdir -- "$work" || fail 1 "cannot create $work"
    undo 'rm -rf -- "$env_dir" "$work"'
    TMPDIR=$(cd -- "$work" && pwd -P); export TMPDIR
    abs_env=$(cd -- "$root/shared/venvs" && pwd -P)/$hash
    printf 'building the environment %s from %s with %s\n' "$hash" "$lock_file" "$installer" >&2
    if [ "$kind" = uv.lock ]; then
      (cd -- "$partial" && UV_PROJECT_ENVIRONMENT=$abs_env uv sync --frozen --no-dev \
        --no-install-project --compile-bytecode --python "$venv_python" "$@") 1>&2 ||
        fail 76 "uv sync failed"
    elif [ "$installer" = uv ]; then
      uv venv --quiet --python "$venv_python" "$abs_env" 1>&2 &&
        (cd -- "$partial" && uv pip install --compile-bytecode --python "$abs_env/bin/python" \
          -r "$lock_file" "$@") 1>&2 ||
        fail 76 "uv pip install -r $lock_file failed"
    else
      "$venv_python" -m venv "$abs_env" 1>&2 ||
        fail 76 "'$venv_python -m venv' failed: install python3-venv on the host"
      (cd -- "$partial" && "$abs_env/bin/python" -m pip install --disable-pip-version-check \
        --no-input -r "$lock_file" "$@") 1>&2 || fail 76 "pip install -r $lock_file failed"
    fi
    : > "$env_dir/.complete" || fail 1 "cannot mark $env_dir complete"
    rm -rf -- "$work"
    emit env "built $hash $(( $(now_ms) - started ))"
  fi
  rm -rf -- "$partial/.venv" && ln -s -- "../../shared/venvs/$hash" "$partial/.venv" ||
    fail 1 "cannot link .venv into $partial"
}
activate() {
  # the release's environment first on PATH, shared/.env (not overriding what is set), and
  # where things are: DEPLOY_ROOT, DEPLOY_SHARED, DEPLOY_RELEASE (the id of this release)
  activate_path_only
  DEPLOY_ROOT=$abs; DEPLOY_SHARED=$abs/shared; DEPLOY_RELEASE=$(pwd -P); DEPLOY_RELEASE=${DEPLOY_RELEASE##*/}
  export DEPLOY_ROOT DEPLOY_SHARED DEPLOY_RELEASE
  load_env_file "$abs/shared/.env"
}
load_env_file() {
  # KEY=VALUE lines (optional `export `, '...' or "..." around the value, # comments): the
  # same subset the runner reads; a key already in the environment wins
  [ -f "$1" ] || return 0
  while IFS= read -r line || [ -n "$line" ]; do
    line=${line#"${line%%[![:space:]]*}"}
    case $line in ''|'#'*) continue ;; 'export '*) line=${line#export } ;; esac
    key=${line%%=*}; value=${line#*=}
    [ "$key" != "$line" ] || continue
    key=${key%"${key##*[![:space:]]}"}
    case $key in ''|[0-9]*|*[!A-Za-z0-9_]*) continue ;; esac
    value=${value#"${value%%[![:space:]]*}"}
    value=${value%"${value##*[![:space:]]}"}
    case $value in
      \"*\") value=${value#\"}; value=${value%\"} ;;
      \'*\') value=${value#\'}; value=${value%\'} ;;
      *[[:space:]]\#*) value=${value%%[[:space:]]\#*}; value=${value%"${value##*[![:space:]]}"} ;;
    esac
    eval "[ -n \"\${$key+set}\" ]" || { eval "$key=\$value"; export "$key"; }
    eval "value=\$$key"
    if secret_key "$key"; then announce_secret "$value"; fi
    case $key in *_URL|*_url) url_password "$value" ;; esac
  done < "$1"
}
secret_key() {
  # whether a variable's name says it holds a secret (as the runner decides)
  case $(printf '%s' "$1" | tr '[:lower:]' '[:upper:]') in
    *PASSWORD*|*SECRET*|*TOKEN*|*KEY*) return 0 ;;
  esac
  return 1
}
url_password() {
  # the password of scheme://user:password@host (up to the last @)
  rest=${1#*://}
  [ "$rest" != "$1" ] || return 0
  case $rest in *@*) userinfo=${rest%@*} ;; *) return 0 ;; esac
  case $userinfo in *:*) announce_secret "${userinfo#*:}" ;; esac
}
announce_secret() {
  # tell the client a value to mask in everything it shows or stores (a line it never shows)
  [ "${#1}" -ge 4 ] && printf '\036secret\t%s\n' "$1" >&2
  return 0
}

# -- switching ---------------------------------------------------------------------------------
switch_to() {
  [ -f "$root/releases/$1/.release.json" ] ||
    fail 71 "release $1 is not on this host (no $root/releases/$1/.release.json)"
  emit previous "$(readlink -- "$root/current" 2>/dev/null)"
  tmp="$root/.current.tmp.$$"
  rm -f -- "$tmp" && ln -s -- "releases/$1" "$tmp" || fail 1 "cannot create a link in $root"
  replace_path "$tmp" "$root/current" || { rm -f -- "$tmp"; fail 1 "cannot switch $root/current"; }
}
unlink_current() {
  emit previous "$(readlink -- "$root/current" 2>/dev/null)"
  rm -f -- "$root/current" || fail 1 "cannot remove $root/current"
}
log_revision() {
  # append once: a retried finish (the connection died after the append) does not log twice
  if [ -f "$root/revisions.jsonl" ]; then
    chmod 600 "$root/revisions.jsonl" 2>/dev/null
    [ "$(tail -n 1 -- "$root/revisions.jsonl")" = "$1" ] && return 0
  fi
  (umask 077 && printf '%s\n' "$1" >> "$root/revisions.jsonl") ||
    fail 1 "cannot append to $root/revisions.jsonl"
}
clean_leftovers() {
  # partial releases and links of interrupted deploys (we hold the lock: none is in use)
  for path in "$root"/releases/.partial-* "$root"/.current.tmp.* "$root"/.dry-run-*; do
    [ -e "$path" ] || [ -L "$path" ] || continue
    rm -rf -- "$path" && emit cleaned "${path##*/}"
  done
  return 0
}
clean_envs() {
  # environments no release links to, and incomplete ones
  [ -d "$root/shared/venvs" ] || return 0
  used=$(for link in "$root"/releases/*/.venv; do
    [ -L "$link" ] && basename -- "$(readlink -- "$link")"; done)
  rm -rf -- "$root"/shared/venvs/.tmp-*
  for dir in "$root"/shared/venvs/*; do
    [ -d "$dir" ] || continue
    name=${dir##*/}
    if [ ! -f "$dir/.complete" ] || ! printf '%s\n' "$used" | grep -qxF -- "$name"; then
      rm -rf -- "$dir" && emit removed_env "$name"
    fi
  done
  return 0
}

stage_dry_run() {
  # stage_dry_run NAME COMPRESSION: the uploaded NAME.tar.gz unpacked into <root>/NAME: a dry
  # run's copy of the new migrations, for the runner's check (removed by unstage_dry_run)
  rm -rf -- "$abs/$1" && mkdir -- "$abs/$1" &&
    tar --no-same-owner -x"$2"f "$abs/$1.tar.gz" -C "$abs/$1" || {
      rm -rf -- "$abs/$1" "$abs/$1.tar.gz"; fail 1 "cannot unpack $abs/$1.tar.gz"; }
  rm -f -- "$abs/$1.tar.gz"
}
unstage_dry_run() { rm -rf -- "$abs/$1" "$abs/$1.tar.gz"; }

# -- running things in a release -----------------------------------------------------------
enter() {
  # enter DIR: cd into <root>/DIR (a release or `current`)
  [ -d "$abs/$1" ] || fail 71 "$root/$1 does not exist on this host"
  cd -- "$abs/$1" || fail 1 "cannot enter $root/$1"
}
run_datamig() {
  # run_datamig DIR RECORD_PID N PYTHON... ARGV...: the runner in <root>/DIR with the release's
  # environment (its .venv/bin/python instead of the N words of PYTHON when it has one),
  # --root and shared/.env. With RECORD_PID=yes the runner's pid goes into the lock (sh execs
  # it, so it leads its process group), so it can be stopped or waited for.
  enter "$1"; record=$2; words=$3; shift 3
  if [ -x .venv/bin/python ]; then
    while [ "$words" -gt 0 ]; do shift; words=$((words - 1)); done
    set -- .venv/bin/python "$@"
  fi
  activate_path_only
  if [ "$record" = yes ]; then printf '%s\n' "$$" > "$abs/deploy.lock/runner.pid"; fi
  exec "$@" --root "$abs" --env-file "$abs/shared/.env"
}
activate_path_only() {
  if [ -x .venv/bin/python ]; then
    VIRTUAL_ENV=$(cd .venv && pwd -P); PATH="$VIRTUAL_ENV/bin:$PATH"; export VIRTUAL_ENV PATH
  fi
}
runner_alive() {
  runner_pid=$(cat -- "$root/deploy.lock/runner.pid" 2>/dev/null) || return 1
  [ -n "$runner_pid" ] && kill -0 "$runner_pid" 2>/dev/null || return 1
  # a zombie has ended: killed, but its parent (a hung sshd session) has not reaped it
  stat=$(cat "/proc/$runner_pid/stat" 2>/dev/null) || return 0
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}
stop_own_runner() {
  # stop_own_runner TOKEN: before an undo unlocks, a runner of this deploy still there (one
  # started during the upload whose connection was lost) is stopped: none outlives the lock
  own_lock "$1" || return 0
  runner_alive || return 0
  stop_runner 5 >/dev/null
}
stop_runner() {
  # stop_runner GRACE: SIGTERM to the runner's process group (it rolls back the migration in
  # flight and records the attempt), SIGKILL after GRACE seconds; returns once it is gone
  runner_alive || { rm -f -- "$root/deploy.lock/runner.pid"; emit runner_stopped none; return 0; }
  kill -TERM -"$runner_pid" 2>/dev/null || kill -TERM "$runner_pid" 2>/dev/null
  # a stopped runner (its session frozen) acts on SIGTERM only once continued
  kill -CONT -"$runner_pid" 2>/dev/null || kill -CONT "$runner_pid" 2>/dev/null
  waited=0
  while runner_alive; do
    if [ "$waited" -ge "$(( $1 * 10 ))" ]; then
      kill -KILL -"$runner_pid" 2>/dev/null || kill -KILL "$runner_pid" 2>/dev/null
    fi
    sleep 0.1 2>/dev/null || sleep 1
    waited=$(( waited + 1 ))
  done
  rm -f -- "$root/deploy.lock/runner.pid"
  emit runner_stopped "$runner_pid"
}
wait_runner() {
  # wait_runner SECONDS: until the runner has exited (0: no limit); 75 if it still runs
  start=$(date +%s)
  while runner_alive; do
    if [ "$1" -gt 0 ] && [ $(( $(date +%s) - start )) -ge "$1" ]; then
      fail 75 "the migration runner (pid $runner_pid) still runs after $1 s"
    fi
    sleep 0.2 2>/dev/null || sleep 1
  done
  rm -f -- "$root/deploy.lock/runner.pid"
  emit runner_gone yes
}
track() {
  # track NAME: remember this script's process group, so a client that stopped waiting for it
  # (a time limit) can stop it and what it started (`untrack NAME GRACE`)
  tracked="$abs/.deploytools-$1.pgid"
  pgid=$(cut -d' ' -f5 "/proc/$$/stat" 2>/dev/null)
  printf '%s\n' "${pgid:-$$}" > "$tracked" 2>/dev/null || tracked=
  on_exit_untrack=$tracked
  trap 'status=$?; [ -z "$on_exit_untrack" ] || rm -f -- "$on_exit_untrack"; if [ "$status" -ne 0 ]; then eval "$on_failure"; fi; exit "$status"' EXIT
}
untrack() {
  # untrack NAME GRACE: SIGTERM the tracked process group, SIGKILL after GRACE seconds; stop
  # waiting GRACE seconds later
  file="$abs/.deploytools-$1.pgid"
  [ -f "$file" ] || { emit stopped none; return 0; }
  pgid=$(cat -- "$file"); rm -f -- "$file"
  [ -n "$pgid" ] && kill -TERM -"$pgid" 2>/dev/null || { emit stopped none; return 0; }
  kill -CONT -"$pgid" 2>/dev/null  # stopped processes act on SIGTERM only once continued
  waited=0
  while group_running "$pgid" && [ "$waited" -lt "$(( $2 * 20 ))" ]; do
    [ "$waited" -ge "$(( $2 * 10 ))" ] && kill -KILL -"$pgid" 2>/dev/null
    sleep 0.1 2>/dev/null || sleep 1
    waited=$(( waited + 1 ))
  done
  emit stopped "$pgid"
}
group_running() {
  # group_running PGID: a process of the group has not ended (zombies have: a hung session
  # never reaps the ones it started); without /proc, any process of the group counts
  kill -0 -"$1" 2>/dev/null || return 1
  [ -r /proc/self/stat ] || return 0
  for stat_file in /proc/[0-9]*/stat; do
    { read -r line < "$stat_file"; } 2>/dev/null || continue
    line=${line##*) }
    state=${line%% *}; line=${line#* }; line=${line#* }
    [ "${line%% *}" = "$1" ] && [ "$state" != Z ] && return 0
  done
  return 1
}
stop_tracked() {
  # stop_tracked GRACE: whatever tracked scripts of a dead deploy still run (its hooks, a
  # restart, the installer), as `untrack` stops each
  for tracked_file in "$abs"/.deploytools-*.pgid; do
    [ -f "$tracked_file" ] || continue
    name=${tracked_file##*/.deploytools-}
    untrack "${name%.pgid}" "$1"
  done
  return 0
}
holders() {
  # the processes (other than this script) that keep our output pipes open: a daemon a hook
  # started without redirecting its output holds the SSH channel open until it exits
  [ -r /proc/$$/fd/2 ] || return 0
  mine=$(readlink /proc/$$/fd/2)
  for fd in /proc/[0-9]*/fd/1 /proc/[0-9]*/fd/2; do
    pid=${fd#/proc/}; pid=${pid%%/*}
    [ "$pid" = "$$" ] && continue
    [ "$(readlink "$fd" 2>/dev/null)" = "$mine" ] || continue
    printf '%s %s\n' "$pid" "$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | cut -c1-120)"
  done | sort -u -n
}
run_hooks() {
  # run_hooks DIR NAME CMD...: each CMD with `sh -c` in <root>/DIR with the release's
  # environment; output on stderr (streamed by the client); `hook NAME#i STATUS MS` per command
  enter "$1"; name=$2; shift 2
  activate
  index=0
  for command in "$@"; do
    index=$((index + 1))
    started=$(now_ms)
    sh -c "$command" </dev/null 1>&2
    code=$?
    emit hook "$name#$index $code $(( $(now_ms) - started ))"
    held=$(holders 2>/dev/null)
    if [ -n "$held" ]; then
      printf '%s\n' "$held" | while IFS= read -r line; do emit holder "$line"; done
      printf 'deploytools: `%s` left process %s holding its output (the SSH channel stays open until it exits): start servers with systemd, or nohup ... </dev/null >/dev/null 2>&1 &\n' \
        "$command" "$(printf '%s' "$held" | head -n 1)" >&2
      exec 1>&- 2>&-
      exit 77
    fi
    [ "$code" -eq 0 ] || fail 78 "$name command \`$command\` exited $code"
  done
}
health_until() {
  # health_until SECONDS CMD...: every CMD passes (in current), retried until SECONDS elapsed
  enter current; seconds=$1; shift
  activate
  deadline=$(( $(date +%s) + seconds ))
  out="${TMPDIR:-/tmp}/deploytools-health.$$"
  tries=0
  while :; do
    tries=$((tries + 1))
    passed=yes
    for command in "$@"; do
      if ! sh -c "$command" </dev/null > "$out" 2>&1; then passed=$command; break; fi
    done
    if [ "$passed" = yes ]; then rm -f -- "$out"; emit health "$tries"; return 0; fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      tail -n 20 -- "$out" >&2; rm -f -- "$out"
      fail 79 "health check \`$passed\` did not pass within $seconds s ($tries tries)"
    fi
    sleep 1
  done
}
