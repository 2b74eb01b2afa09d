#!/usr/bin/env bash
# Creates the topics defined in topics.conf with rpk. The compose init job runs it; the local
# stack reads the same file through `imgpipe setup`. Idempotent: existing topics are left as
# they are. Environment: RPK_BROKERS (rpk's own), TOPICS_FILE, IMGPIPE_KAFKA_TOPIC_PREFIX.
set -euo pipefail

file=${TOPICS_FILE:-"$(dirname "$0")/topics.conf"}
prefix=${IMGPIPE_KAFKA_TOPIC_PREFIX:-}

while IFS= read -r line || [[ -n "$line" ]]; do
  line=${line%%#*}
  read -r name partitions replicas configs extra <<<"$line" || true
  [[ -z "${name:-}" ]] && continue
  if [[ -z "${replicas:-}" || -n "${extra:-}" ]]; then
    echo "create-topics: malformed line in $file: $line" >&2
    exit 1
  fi
  args=(topic create "$prefix$name" --partitions "$partitions" --replicas "$replicas")
  if [[ -n "${configs:-}" ]]; then
    IFS=, read -ra pairs <<<"$configs"
    for pair in "${pairs[@]}"; do args+=(--topic-config "$pair"); done
  fi
  if output=$(rpk "${args[@]}" 2>&1); then
    echo "$output"
  elif grep -q TOPIC_ALREADY_EXISTS <<<"$output"; then
    echo "topic $prefix$name exists"
  else
    echo "$output" >&2
    exit 1
  fi
done <"$file"
