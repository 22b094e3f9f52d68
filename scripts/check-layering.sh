#!/usr/bin/env bash
# The crate layering, checked over `cargo metadata`: normal and build dependencies (a build
# script's dependency is built into the crate too), not dev-dependencies (tests may use anything,
# e.g. the testbed). docs/architecture.md draws the same rules:
#   twill-model      depends on no twill crate
#   twill-subnet     depends only on twill-model
#   twill-netlink    depends only on twill-model, and only for MacAddr (no lease types)
#   twill-backend,
#   twill-wireguard-backend  never reach twill-etcd (directly or through another crate)
#   twill-agent      depends only on model, subnet, netlink, backend; never reaches twill-etcd
#   twill-cni        depends only on twill-model (the CNI plugin reads subnet.env, nothing else)
#   crates/*         never depend on a package under examples/
#   unsafe code      only in examples/twilld/src/malloc.rs (glibc's mallopt and
#                    malloc_trim); the workspace lint denies it everywhere else
# Prints one line per violation and exits 1 if there is any. Needs cargo and jq
# (scripts/install-deps.sh installs jq).
set -euo pipefail
cd "$(dirname "$0")/.."

meta=$(cargo metadata --format-version 1 --no-deps)
root=$(jq -r '.workspace_root' <<<"$meta")

# "package dependency" for each normal or build dependency on a workspace package.
edges=$(jq -r '
    [.packages[].name] as $ws
    | .packages[] | .name as $p
    | .dependencies[]
    | select(.kind == null or .kind == "build") | .name as $d
    | select($ws | any(. == $d))
    | "\($p) \($d)"' <<<"$meta")
# "package manifest-dir" for each workspace package.
dirs=$(jq -r '.packages[] | "\(.name) \(.manifest_path | sub("/Cargo.toml$"; ""))"' <<<"$meta")

violations=()
reported=" "
# violation WHO WHAT MESSAGE: one line per (WHO, WHAT), however many rules it breaks.
violation() {
    case "$reported" in *" $1>$2 "*) return 0 ;; esac
    reported+="$1>$2 "
    violations+=("layering: $3")
}

direct() { awk -v p="$1" '$1 == p { print $2 }' <<<"$edges"; }
exists() { awk -v p="$1" '$1 == p { found = 1 } END { exit !found }' <<<"$dirs"; }
# Every workspace package reachable from $1 through normal dependencies.
reach() {
    local todo=("$1") seen=" " p d
    while [ ${#todo[@]} -gt 0 ]; do
        p=${todo[0]}; todo=("${todo[@]:1}")
        for d in $(direct "$p"); do
            case "$seen" in *" $d "*) continue ;; esac
            seen+="$d "; todo+=("$d")
        done
    done
    printf '%s\n' $seen
}
# only PKG ALLOWED...: PKG's direct workspace dependencies are among ALLOWED.
only() {
    local p=$1 d; shift
    exists "$p" || return 0
    for d in $(direct "$p"); do
        case " $* " in *" $d "*) ;; *) violation "$p" "$d" "$p depends on $d (allowed: ${*:-no twill crate})" ;; esac
    done
}
# never PKG FORBIDDEN: PKG does not reach FORBIDDEN, directly or through another crate.
never() {
    local p=$1 bad=$2 d x
    exists "$p" || return 0
    for d in $(reach "$p"); do
        [ "$d" = "$bad" ] || continue
        if direct "$p" | grep -qx "$bad"; then
            violation "$p" "$bad" "$p depends on $bad"
        else
            local via=()
            for x in $(direct "$p"); do
                if reach "$x" | grep -qx "$bad"; then via+=("$x"); fi
            done
            violation "$p" "$bad" "$p reaches $bad through ${via[*]}"
        fi
    done
}
# The Rust name under which PKG sees its dependency DEP (a rename in Cargo.toml counts).
lib_name() {
    jq -r --arg p "$1" --arg d "$2" '
        .packages[] | select(.name == $p) | .dependencies[]
        | select(.name == $d and (.kind == null or .kind == "build")) | (.rename // .name) | gsub("-"; "_")' <<<"$meta"
}
# The directory of PKG's library target.
lib_dir() {
    jq -r --arg p "$1" '
        .packages[] | select(.name == $p) | .targets[]
        | select(.kind | index("lib")) | .src_path | sub("/[^/]*$"; "")' <<<"$meta"
}

only twill-model
only twill-subnet twill-model

# twill-netlink takes MacAddr from twill-model (one MAC type from the lease's VtepMAC down to
# the FDB entry, instead of two and a conversion in every backend); nothing else of the model,
# above all no lease type, may appear in it.
only twill-netlink twill-model
if exists twill-netlink && direct twill-netlink | grep -qx twill-model; then
    model=$(lib_name twill-netlink twill-model)
    while IFS= read -r hit; do
        violation twill-netlink "$hit" "twill-netlink uses $model beyond MacAddr: ${hit#"$root"/}"
    done < <(grep -rnw --include='*.rs' "$model" "$(lib_dir twill-netlink)" \
                 | awk -v m="$model" '{ l = $0; gsub(m "::MacAddr", "", l)
                                        if (l ~ ("(^|[^A-Za-z0-9_])" m "([^A-Za-z0-9_]|$)")) print }')
fi

# A backend never reaches the registry: the agent that embeds it chooses one
# (twill-wg-agent is a package of its own for that reason).
for backend in twill-backend twill-wireguard-backend; do
    exists "$backend" || continue
    never "$backend" twill-etcd
done

only twill-agent twill-model twill-subnet twill-netlink twill-backend
never twill-agent twill-etcd

# The CNI plugin is run by container runtimes on every ADD/DEL: it reads subnet.env
# and execs its delegate, and never talks to etcd or netlink itself.
only twill-cni twill-model

while read -r p dir; do
    case "$dir/" in "$root"/crates/*) ;; *) continue ;; esac
    for d in $(direct "$p"); do
        ddir=$(awk -v p="$d" '$1 == p { print $2 }' <<<"$dirs")
        case "$ddir/" in
            "$root"/examples/*) violation "$p" "$d" "$p (crates/) depends on the example $d (${ddir#"$root"/})" ;;
        esac
    done
done <<<"$dirs"

# The workspace denies unsafe_code rather than forbidding it so that one module can
# call glibc; no other file may lift the lint.
unsafe_home=examples/twilld/src/malloc.rs
while IFS= read -r hit; do
    violations+=("unsafe: only $unsafe_home may allow unsafe_code: ${hit#"$root"/}")
done < <(grep -rn --include='*.rs' -E '(allow|expect|warn)\(([^)]*[ ,(])?unsafe_code([^A-Za-z0-9_]|$)' "$root/crates" "$root/examples" "$root/benches" \
             | grep -v "^$root/$unsafe_home:")
while IFS= read -r hit; do
    violations+=("unsafe: a package's own lint table sets unsafe_code: ${hit#"$root"/}")
done < <(grep -rn --include=Cargo.toml -w unsafe_code "$root/crates" "$root/examples" "$root/benches")

if [ ${#violations[@]} -gt 0 ]; then
    printf '%s\n' "${violations[@]}" >&2
    exit 1
fi
echo "layering: ok ($(wc -l <<<"$dirs") packages, $(wc -l <<<"$edges") dependencies between them)"
