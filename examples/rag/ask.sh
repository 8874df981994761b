#!/bin/bash
# Ask a RAG through its OpenAI-compatible route with curl and jq, streaming the answer to stdout:
#   examples/rag/ask.sh -u http://127.0.0.1:4202/rag/v1/query -m handbook -p "How long are backups kept?" [-k TOKEN]
# The key, when given, goes in the x-nhn-apikey header. Only each chunk's choices[].delta.content is printed;
# an error answer prints its message to stderr and exits 1.
set -euo pipefail

URL="http://127.0.0.1:4202/rag/v1/query"
MODEL=""
PROMPT=""
API_KEY=""
while getopts ":k:u:m:p:h" opt; do
  case "$opt" in
    k) API_KEY="$OPTARG" ;;
    u) URL="$OPTARG" ;;
    m) MODEL="$OPTARG" ;;
    p) PROMPT="$OPTARG" ;;
    h) sed -n 2,5p "$0"; exit 0 ;;
    *) echo "usage: $0 -m RAG -p QUESTION [-u URL] [-k KEY]" >&2; exit 2 ;;
  esac
done
[[ -n "$MODEL" && -n "$PROMPT" ]] || { echo "usage: $0 -m RAG -p QUESTION [-u URL] [-k KEY]" >&2; exit 2; }
command -v jq >/dev/null || { echo "jq is needed" >&2; exit 1; }

payload="$(jq -n --arg model "$MODEL" --arg prompt "$PROMPT" \
  '{model: $model, messages: [{role: "user", content: $prompt}], stream: true}')"
headers=(-H "Content-Type: application/json")
[[ -n "$API_KEY" ]] && headers+=(-H "x-nhn-apikey: $API_KEY")

curl -sS -N -X POST "$URL" "${headers[@]}" --data-raw "$payload" | while IFS= read -r line || [[ -n "$line" ]]; do  # the last line may lack its newline (an error body)
  [[ -z "$line" ]] && continue
  [[ "$line" == "data: [DONE]"* ]] && break
  if [[ "$line" == data:* ]]; then
    printf '%s\n' "${line#data: }" | jq -j '(.error.message // empty | "\n" + . + "\n" | halt_error(1)),
                                          (.choices[]?.delta?.content // empty)'
  elif [[ "$line" == "{"* ]]; then  # an error instead of a stream (401, 404, 502): its message, and exit 1
    printf '%s\n' "$line" | jq -r '.error.message // .' >&2
    exit 1
  fi
done
echo
