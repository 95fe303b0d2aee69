#!/usr/bin/env bash
# The patient-rights workflows of docs/rights.md, run against a fresh `carta serve` with curl, printed as Markdown
# with the real responses. `make rights-doc` puts its output into docs/rights.md; cmd/carta's tests run it too
# (when bash, curl and jq are present), so the document cannot drift from what the server does.
#
#   CARTA=bin/carta docs/rights-walkthrough.sh > walkthrough.md
#
# Every step states the HTTP status it expects and the script stops at the first surprise.
set -euo pipefail

CARTA=${CARTA:-bin/carta}
for tool in curl jq "$CARTA"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "rights-walkthrough: needs $tool" >&2; exit 2; }
done

data=$(mktemp -d)
"$CARTA" serve --data "$data" --addr 127.0.0.1:0 --log-level warn \
  --records-owner Organization/records-office --records-owner-name "Records office" \
  --contact-name "Privacy Officer" --contact-phone "+1 555 0100" \
  --complaint "Write to the Privacy Officer, 1 Example Street, Springfield, or call +1 555 0100." >"$data/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
FHIR=
for _ in $(seq 200); do
  FHIR=$(sed -n 's/.*serving FHIR R4 at \([^ ]*\).*/\1/p' "$data/server.log")
  [ -n "$FHIR" ] && break
  sleep 0.05
done
[ -n "$FHIR" ] || { echo "rights-walkthrough: the server did not start:" >&2; cat "$data/server.log" >&2; exit 1; }
token() { "$CARTA" token --data "$data" "$@"; }
SYSTEM=$(token --system --scope "system/*.cruds")
PATIENT=$(token --patient jamie --scope "patient/*.cruds")
CLERK=$(token --user Practitioner/clerk --scope "user/*.cruds")
DR_LEE=$(token --user Practitioner/dr-lee --scope "user/*.cruds")
DR_OSEI=$(token --user Practitioner/dr-osei --scope "user/*.cruds")
declare -A tokens=([SYSTEM]=$SYSTEM [PATIENT]=$PATIENT [CLERK]=$CLERK [DR_LEE]=$DR_LEE [DR_OSEI]=$DR_OSEI)

# Quiet set-up: the patient, the records office and its staff, two clinical documents.
setup() {
  curl -fsS -o /dev/null -X PUT "$FHIR/$1" -H "Authorization: Bearer $SYSTEM" -H "Content-Type: application/fhir+json" -d "$2"
}
setup Organization/records-office '{"resourceType":"Organization","id":"records-office","name":"Records office"}'
setup Patient/jamie '{"resourceType":"Patient","id":"jamie","name":[{"family":"Rivera","given":["Jamie"]}]}'
setup Practitioner/clerk '{"resourceType":"Practitioner","id":"clerk","name":[{"family":"Okafor","given":["Ada"]}]}'
md='{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0360","code":"MD"}]}'
setup Practitioner/dr-lee '{"resourceType":"Practitioner","id":"dr-lee","name":[{"family":"Lee"}],"qualification":[{"code":'"$md"'}]}'
setup Practitioner/dr-osei '{"resourceType":"Practitioner","id":"dr-osei","name":[{"family":"Osei"}],"qualification":[{"code":'"$md"'}]}'
setup DocumentReference/allergies '{"resourceType":"DocumentReference","id":"allergies","status":"current","subject":{"reference":"Patient/jamie"},"description":"Allergy list","content":[{"attachment":{"contentType":"text/plain","data":"QWxsZXJneTogcGVuaWNpbGxpbg=="}}]}'
setup DocumentReference/vitals '{"resourceType":"DocumentReference","id":"vitals","status":"current","subject":{"reference":"Patient/jamie"},"description":"Vital signs","content":[{"attachment":{"contentType":"text/plain","data":"V2VpZ2h0OiA5MCBrZw=="}}]}'

today=$(date -u +%F)
later() { date -u -d "$today + $1 days" +%F; }

# Filters that keep what a reader needs from a response: value is an element's value[x], a reference as its text.
VALUE='def value: (to_entries | map(select(.key | startswith("value"))) | .[0].value) as $v | if ($v | type) == "object" and $v.reference then $v.reference else $v end;'
TASKDEF=$VALUE'def task: {id, status, businessStatus: .businessStatus.coding[0].code} + (if .statusReason then {statusReason: .statusReason.coding[0].code} else {} end)
  + (if .authoredOn then {authoredOn} else {} end) + (if .owner then {owner: .owner.reference} else {} end)
  + (if .restriction.period.end then {due: .restriction.period.end} else {} end)
  + (if .partOf then {partOf: [.partOf[].reference]} else {} end)
  + (if .reasonReference then {reasonReference: .reasonReference.reference} else {} end)
  + (if .extension then {extension: [.extension[] | {(.url): (if .extension then [.extension[] | {(.url): value}] | add else value end)}] | add} else {} end)
  + (if .output then {output: [.output[] | {(.type.coding[0].code): value}]} else {} end);'
TASK=$TASKDEF' task'
OUTCOME='{status: "refused", issue: [.issue[] | {severity, code, diagnostics}]}'

step=0
heading() {
  if [ -n "$1" ]; then printf '\n### %s\n' "$1"; fi
  if [ -n "$2" ]; then printf '\n%s\n' "$2"; fi
}

# call EXPECTED METHOD PATH TOKEN BODY FILTER: run one request, print it and its (filtered) response.
call() {
  local want=$1 method=$2 path=$3 tok=$4 body=$5 filter=$6
  step=$((step + 1))
  local args=(-sS -o "$data/body" -D "$data/headers" -w '%{http_code}' -X "$method" "$FHIR$path" -H "Authorization: Bearer ${tokens[$tok]}")
  if [ -n "$body" ]; then
    args+=(-H "Content-Type: application/fhir+json" --data-binary "$body")
  fi
  if [ -n "${SHOW:-}" ]; then
    printf '\n```sh\n%s\n```\n\n' "$SHOW"
  else
    printf '\n```sh\ncurl -X %s "$FHIR%s" \\\n  -H "Authorization: Bearer $%s"' "$method" "${path//\$/\\\$}" "$tok"
    if [ -n "$body" ]; then
      printf ' \\\n  -H "Content-Type: application/fhir+json" \\\n  -d '"'"'%s'"'"'' "$body"
    fi
    printf '\n```\n\n'
  fi
  local got
  got=$(curl "${args[@]}")
  if [ "$got" != "$want" ]; then
    echo "rights-walkthrough: step $step ($method $path): HTTP $got, expected $want" >&2
    cat "$data/body" >&2
    exit 1
  fi
  local link
  link=$(grep -i '^link:' "$data/headers" | tr -d '\r' || true)
  printf 'HTTP %s%s\n\n```json\n' "$got" "${link:+ — $link}"
  jq "$filter" "$data/body"
  printf '```\n'
  cp "$data/body" "$data/last"
}
last() { jq -r "$1" "$data/last"; }

cat <<EOF
<!-- Generated by docs/rights-walkthrough.sh against a fresh carta serve on $today; regenerate with make rights-doc. -->

The tokens are minted with \`carta token\` (a SMART app gets the same kind from the authorization server, see
docs/auth.md): \`\$PATIENT\` for Jamie Rivera (\`patient/*.cruds\`), \`\$CLERK\` for Ada Okafor of the records office,
\`\$DR_LEE\` and \`\$DR_OSEI\` for two licensed physicians (\`user/*.cruds\`). \`\$FHIR\` is the server's FHIR base.
The server was started with the records office's contact:

\`\`\`sh
carta serve --contact-name "Privacy Officer" --contact-phone "+1 555 0100" \\
  --complaint "Write to the Privacy Officer, 1 Example Street, Springfield, or call +1 555 0100."
\`\`\`

Responses are cut down with jq to the elements that change; the server returns whole resources.

## Right of access (45 CFR 164.524)
EOF

heading "1. The patient asks for a copy" "The server sets the receipt time, the status pair, the owner and the 30-day due date, whatever the client sent."
call 201 POST /Task PATIENT '{"resourceType":"Task","status":"ready","intent":"order",
 "code":{"coding":[{"system":"https://carta-fhir.github.io/fhir/CodeSystem/request-type","code":"access-copy"}]},
 "for":{"reference":"Patient/jamie"},
 "input":[{"type":{"coding":[{"system":"https://carta-fhir.github.io/fhir/CodeSystem/access-input","code":"requested-records"}]},"valueString":"Everything from 2025"},
  {"type":{"coding":[{"system":"https://carta-fhir.github.io/fhir/CodeSystem/access-input","code":"requested-format"}]},"valueCode":"application/pdf"}]}' "$TASK"
access=$(last .id)

heading "2. The records office starts the review" "A \`PUT\` of the whole Task with the new status pair (what the clerk's system read, with \`status\` and \`businessStatus\` changed)."
put_status() { # put_status TASK SYSTEM: the clerk's read-modify-write, shown as the pipeline it is
  local f='.status="in-progress" | .businessStatus={"coding":[{"system":"'"$2"'","code":"in-review"}]}'
  body=$(curl -fsS "$FHIR/Task/$1" -H "Authorization: Bearer $CLERK" | jq -c "$f")
  SHOW=$(printf 'curl -s "$FHIR/Task/%s" -H "Authorization: Bearer $CLERK" |\n  jq '"'"'%s'"'"' |\n  curl -X PUT "$FHIR/Task/%s" -H "Authorization: Bearer $CLERK" \\\n    -H "Content-Type: application/fhir+json" -d @-' "$1" "$f" "$1") \
    call 200 PUT "/Task/$1" CLERK "$body" "$TASK"
}
put_status "$access" https://carta-fhir.github.io/fhir/CodeSystem/access-status

heading "3. The patient may not move it" "Only the records office changes the status; the patient's one status change is to cancel."
bad=$(jq -c '.businessStatus.coding[0].code="fulfilled" | .status="completed"' <<<"$body")
SHOW=$(printf 'curl -s "$FHIR/Task/%s" -H "Authorization: Bearer $PATIENT" |\n  jq '"'"'.status="completed" | .businessStatus.coding[0].code="fulfilled"'"'"' |\n  curl -X PUT "$FHIR/Task/%s" -H "Authorization: Bearer $PATIENT" \\\n    -H "Content-Type: application/fhir+json" -d @-' "$access" "$access") \
  call 403 PUT "/Task/$access" PATIENT "$bad" "$OUTCOME"

heading "4. One extension" "On or before the due date, with a reason and a new date at most 30 days later; the patient gets a letter."
call 200 POST "/Task/$access/\$extend" CLERK '{"resourceType":"Parameters","parameter":[
 {"name":"reason","valueString":"The 2025 records are in off-site storage"},{"name":"due","valueDate":"'"$(later 45)"'"}]}' "$TASK"

heading "5. Not a second one" "HIPAA allows one extension."
call 422 POST "/Task/$access/\$extend" CLERK '{"resourceType":"Parameters","parameter":[
 {"name":"reason","valueString":"Still looking"},{"name":"due","valueDate":"'"$(later 55)"'"}]}' "$OUTCOME"

heading "6. Open requests due within 60 days" "What a records office checks every morning (also \`carta overdue\` and the metric \`carta_rights_overdue_requests\` on /metrics)."
call 200 GET "/Task?due-date=le$(later 60)&status=ready,in-progress&_elements=id,status,businessStatus,restriction" CLERK "" '{total, open: [.entry[]?.resource | {id, businessStatus: .businessStatus.coding[0].code, due: .restriction.period.end}]}'


heading "7. Denial on a reviewable ground" "Dr Lee denies: the server composes the notice from the ground, the basis and the configured contact, sends it to the patient, and records a Provenance naming the decider."
call 200 POST "/Task/$access/\$deny" DR_LEE '{"resourceType":"Parameters","parameter":[
 {"name":"ground","valueCode":"endanger-life-safety"},
 {"name":"basis","valueString":"A licensed clinician judged that access now is reasonably likely to endanger your life or physical safety."}]}' "$TASK"
notice=$(last '.output[] | select(.type.coding[0].code=="denial-notice") | .valueReference.reference')

heading "8. The letter the patient received" "Every part 164.524(d)(2) asks for: the basis, the right to a review and how to ask, how to complain to the provider and to HHS, and who to call."
call 200 GET "/$notice" PATIENT "" '{resourceType, id, status, recipient: [.recipient[].reference], about: [.about[].reference], text: [.payload[].contentString]}'

heading "9. The patient asks for a review" "A \`denial-review\` Task, part of the denied request."
call 201 POST "/Task/$access/\$request-review" PATIENT "" "$TASK"
review=$(last .id)

heading "10. The clinician who denied may not decide the review" "Only a licensed professional who took no part in the denial."
call 422 POST "/Task/$review/\$decide-review" DR_LEE '{"resourceType":"Parameters","parameter":[
 {"name":"outcome","valueCode":"upheld"},{"name":"rationale","valueString":"I stand by it"}]}' "$OUTCOME"

heading "11. Nor may the clerk, who is not a licensed professional" ""
call 403 POST "/Task/$review/\$decide-review" CLERK '{"resourceType":"Parameters","parameter":[
 {"name":"outcome","valueCode":"reversed"},{"name":"rationale","valueString":"x"}]}' "$OUTCOME"

heading "12. Dr Osei reverses the denial" "The decision binds: the original request is open again, and the patient is told."
call 200 POST "/Task/$review/\$decide-review" DR_OSEI '{"resourceType":"Parameters","parameter":[
 {"name":"outcome","valueCode":"reversed"},{"name":"rationale","valueString":"The risk no longer applies."}]}' "$TASK"
call 200 GET "/Task/$access" PATIENT "" "$TASK"

heading "13. Fulfilled, in the format asked for or one agreed" "The patient asked for PDF; these records exist as plain text. Delivering them without saying so is refused (164.524(c)(2)(i))…"
call 422 POST "/Task/$access/\$fulfil" CLERK '{"resourceType":"Parameters","parameter":[
 {"name":"delivered","valueReference":{"reference":"DocumentReference/allergies"}},
 {"name":"delivered","valueReference":{"reference":"DocumentReference/vitals"}}]}' "$OUTCOME"
heading "" "…so the records office states the format agreed with the patient, which the patient's letter repeats (only records of this patient are accepted)."
call 200 POST "/Task/$access/\$fulfil" CLERK '{"resourceType":"Parameters","parameter":[
 {"name":"delivered","valueReference":{"reference":"DocumentReference/allergies"}},
 {"name":"delivered","valueReference":{"reference":"DocumentReference/vitals"}},
 {"name":"format-agreed","valueString":"plain text, agreed with the patient by phone"}]}' "$TASK"

heading "14. The patient's letters" "Extension, denial, review decision and fulfilment, all addressed to the patient."
call 200 GET "/Communication?subject=Patient/jamie&_sort=sent" PATIENT "" '[.entry[].resource | {id, topic: .topic.coding[0].code, sent}]'

cat <<'EOF'

## Right to amend (45 CFR 164.526, HL7 Patient Request for Corrections)
EOF

heading "15. The patient asks for a correction" "A \`collection\` Bundle with one Communication to \`\$correctionrequest\`; the answer holds the stored Communication and the Task the server opened (due in 60 days, in the R5 \`requestedPeriod\` extension the IG uses and in Carta's deadline extension)."
call 201 POST "/Communication/\$correctionrequest" PATIENT '{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Communication","status":"completed",
 "category":[{"coding":[{"system":"http://hl7.org/fhir/uv/patient-corrections/CodeSystem/PatientCorrectionCommunicationTypes","code":"medRecCxReq"}]}],
 "subject":{"reference":"Patient/jamie"},
 "payload":[{"contentString":"My allergy is to sulfa drugs, not penicillin."},{"contentReference":{"reference":"DocumentReference/allergies"}}]}}]}' \
  "$TASKDEF"'{type, entry: [.entry[].resource | if .resourceType=="Task" then {resourceType} + task + {focus: .focus.reference} else {resourceType, id, about: [.about[]?.reference]} end]}'
amend=$(last '.entry[] | select(.resource.resourceType=="Task") | .resource.id')

heading "16. In review, then denied" "The record is accurate and complete; the notice tells the patient about the statement of disagreement."
put_status "$amend" http://hl7.org/fhir/uv/patient-corrections/CodeSystem/PatientCorrectionBusinessStatus
call 200 POST "/Task/$amend/\$deny" DR_LEE '{"resourceType":"Parameters","parameter":[
 {"name":"ground","valueCode":"accurate-and-complete"},
 {"name":"basis","valueString":"A 2019 skin test confirmed the penicillin allergy."}]}' "$TASK"

heading "17. The patient disagrees" "A \`medRecCxDenialDisagree\` Communication about the denied Task opens the disagreement Task."
call 201 POST "/Communication/\$correctionrequest" PATIENT '{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Communication","status":"completed",
 "category":[{"coding":[{"system":"http://hl7.org/fhir/uv/patient-corrections/CodeSystem/PatientCorrectionCommunicationTypes","code":"medRecCxDenialDisagree"}]}],
 "subject":{"reference":"Patient/jamie"},"about":[{"reference":"Task/'"$amend"'"}],
 "payload":[{"contentString":"The 2019 test was for amoxicillin-clavulanate, not penicillin."}]}}]}' \
  "$TASKDEF"'[.entry[].resource | if .resourceType=="Task" then {resourceType} + task else {resourceType, id, about: [.about[]?.reference]} end]'
disagree=$(last '.entry[] | select(.resource.resourceType=="Task") | .resource.id')

heading "18. The records office rebuts" "The patient receives the rebuttal; the request is complete."
call 200 POST "/Task/$disagree/\$rebut" CLERK '{"resourceType":"Parameters","parameter":[
 {"name":"text","valueString":"The 2019 skin test used benzylpenicillin; the result stands."}]}' "$TASK"

heading "19. The dispute stays with the record" "A read of the record says where its dispute is (\`Link\`)…"
call 200 GET /DocumentReference/allergies CLERK "" '{id, status, description}'
heading "" "…and a search that returns the record returns the request, the denial, the statement and the rebuttal with it (search mode \`include\`), to staff and to any disclosure outside the provider."
call 200 GET "/DocumentReference?_id=allergies" CLERK "" '[.entry[] | {mode: .search.mode, id: .resource.id, description: .resource.description, relatesTo: [.resource.relatesTo[]? | {code, target: .target.reference}]}]'

heading "20. A second request, accepted" "Accepting applies the amendment: a new DocumentReference that \`replaces\` the original (now \`superseded\`), a Provenance, and a letter to each person the patient named."
call 201 POST "/Communication/\$correctionrequest" PATIENT '{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Communication","status":"completed",
 "category":[{"coding":[{"system":"http://hl7.org/fhir/uv/patient-corrections/CodeSystem/PatientCorrectionCommunicationTypes","code":"medRecCxReq"}]}],
 "subject":{"reference":"Patient/jamie"},
 "payload":[{"contentString":"My weight is 80 kg, not 90 kg."},{"contentReference":{"reference":"DocumentReference/vitals"}}]}}]}' \
  '[.entry[].resource | {resourceType, id}]'
amend2=$(last '.entry[] | select(.resource.resourceType=="Task") | .resource.id')
call 200 POST "/Task/$amend2/\$accept" CLERK '{"resourceType":"Parameters","parameter":[
 {"name":"mode","valueCode":"replaces"},
 {"name":"amended","resource":{"resourceType":"DocumentReference","status":"current","description":"Vital signs (amended)",
   "content":[{"attachment":{"contentType":"text/plain","data":"V2VpZ2h0OiA4MCBrZw=="}}]}},
 {"name":"notify","valueReference":{"reference":"Practitioner/dr-osei"}}]}' "$TASK"
call 200 GET "/DocumentReference?relatesto=DocumentReference/vitals&relation=replaces" PATIENT "" '[.entry[].resource | {id, status, docStatus, description, relatesTo: [.relatesTo[] | {code, target: .target.reference}]}]'
amended=$(curl -fsS "$FHIR/DocumentReference?relatesto=DocumentReference/vitals&relation=replaces" -H "Authorization: Bearer $CLERK" | jq -r '.entry[0].resource.id')
call 200 GET /DocumentReference/vitals PATIENT "" '{id, status}'
heading "" "Who amended what, and why:"
call 200 GET "/Provenance?target=DocumentReference/$amended" CLERK "" '[.entry[].resource | {target: [.target[].reference], operation: .activity.coding[0].code, activity: .activity.text, reason: [.reason[].coding[0].code], author: [.agent[].who.reference], revisionOf: [.entity[]?.what.reference]}]'
heading "" "The letter to the person the patient asked to be told (164.526(c)(3)):"
call 200 GET "/Communication?recipient=Practitioner/dr-osei" CLERK "" '[.entry[].resource | {id, sent, about: [.about[]?.reference], payload: [.payload[] | .contentString // .contentReference.reference]}]'

cat <<'EOF'

## Who saw my record
EOF
heading "21. The patient lists the accesses to their record" "Every read, search and change is audited (§9); a patient sees the AuditEvents of their own record, and nothing of anyone else's. Reads by one person through one app within 100 ms share an event. Here, who did how much:"
call 200 GET "/AuditEvent?patient=jamie&_count=500" PATIENT "" '[.entry[].resource | {who: (.agent[0].who.reference // .agent[0].who.display), action}] | group_by(.who) | map({who: .[0].who, events: length, actions: (map(.action) | unique | join(""))})'
heading "" "One of them in full:"
call 200 GET "/AuditEvent?patient=jamie&agent=Practitioner/dr-osei&_count=1" PATIENT "" '.entry[0].resource | del(.meta, .id)'
