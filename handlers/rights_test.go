package handlers_test

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/carta-fhir/carta/auth"
	"github.com/carta-fhir/carta/fhir"
	"github.com/carta-fhir/carta/fhir/rights"
	"github.com/carta-fhir/carta/handlers"
	"github.com/carta-fhir/carta/store/storetest"
)

// rightsEnv is a server whose rights rules run on a clock the test moves, with the records office configured.
type rightsEnv struct {
	*env
	now                               time.Time
	sys, pat, clerk, denier, reviewer string
	other                             string // another patient's token
	rules                             *rights.Rules
}

func newRightsEnv(t *testing.T, b storetest.Backend) *rightsEnv {
	re := &rightsEnv{now: time.Date(2026, 3, 2, 15, 0, 0, 0, time.UTC)}
	re.rules = rights.New(rights.Config{Owner: "Organization/records", OwnerDisplay: "Records office",
		Contact: rights.Contact{Name: "Privacy Officer", Phone: "+1 555 0100", Complaint: "Write to the Privacy Officer, 1 Example Street.",
			ReviewHowTo: "Ask in your app, or call the Privacy Officer.", DisagreeHowTo: "Send a statement in your app, or write to the Privacy Officer."}})
	re.rules.Now = func() time.Time { return re.now }
	re.env = newEnv(t, b, func(c *handlers.Config) { c.Rights = re.rules })
	e := re.env
	re.sys = e.system()
	for _, r := range []string{
		`{"resourceType":"Organization","id":"records","name":"Records office"}`,
		`{"resourceType":"Patient","id":"p1","name":[{"family":"Rivera","given":["Jamie"]}]}`,
		`{"resourceType":"Patient","id":"p2","name":[{"family":"Novak"}]}`,
		`{"resourceType":"Practitioner","id":"clerk","name":[{"family":"Clerk"}]}`,
		`{"resourceType":"Practitioner","id":"denier","qualification":[{"code":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0360","code":"MD"}]}}]}`,
		`{"resourceType":"Practitioner","id":"reviewer","qualification":[{"code":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0360","code":"MD"}]}}]}`,
		`{"resourceType":"DocumentReference","id":"d1","status":"current","subject":{"reference":"Patient/p1"},"content":[{"attachment":{"contentType":"text/plain","data":"QWxsZXJneTogcGVuaWNpbGxpbg=="}}]}`,
		`{"resourceType":"DocumentReference","id":"d2","status":"current","subject":{"reference":"Patient/p1"},"content":[{"attachment":{"contentType":"text/plain","data":"V2VpZ2h0OiA5MCBrZw=="}}]}`,
		`{"resourceType":"DocumentReference","id":"d9","status":"current","subject":{"reference":"Patient/p2"},"content":[{"attachment":{"contentType":"text/plain","data":"eA=="}}]}`,
	} {
		var o struct{ ResourceType, ID string }
		json.Unmarshal([]byte(r), &o)
		e.must(201, "PUT", "/"+o.ResourceType+"/"+o.ID, re.sys, r)
	}
	re.pat = e.patient("p1", "patient/*.cruds")
	re.other = e.patient("p2", "patient/*.cruds")
	staff := func(id string) string {
		return e.tok(auth.Grant{Subject: id, FHIRUser: "Practitioner/" + id, Scope: "user/*.cruds"})
	}
	re.clerk, re.denier, re.reviewer = staff("clerk"), staff("denier"), staff("reviewer")
	return re
}

func params(kv ...string) string {
	var ps []string
	for i := 0; i+1 < len(kv); i += 2 {
		v := kv[i+1]
		switch {
		case strings.HasPrefix(v, "{"):
			ps = append(ps, fmt.Sprintf(`{"name":%q,%s}`, kv[i], v[1:len(v)-1]))
		default:
			ps = append(ps, fmt.Sprintf(`{"name":%q,"valueString":%q}`, kv[i], v))
		}
	}
	return `{"resourceType":"Parameters","parameter":[` + strings.Join(ps, ",") + `]}`
}

// rule checks a refusal: its status and that its OperationOutcome names the rule.
func rule(t *testing.T, r *resp, status int, text string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.body)
	}
	if d, _ := outcome(t, r); !strings.Contains(d, text) {
		t.Fatalf("the refusal %q does not say %q", d, text)
	}
}

func str(t *testing.T, r *resp, path ...string) string {
	t.Helper()
	var v any = r.json(t)
	for _, p := range path {
		switch x := v.(type) {
		case *fhir.Object:
			v, _ = x.Get(p)
		case []any:
			var i int
			fmt.Sscan(p, &i)
			if i >= len(x) {
				return ""
			}
			v = x[i]
		}
	}
	s, _ := v.(string)
	return s
}

// TestAccessRequestWorkflow is the right of access end to end over HTTP with real tokens: file → start review →
// extend → a second extension (422) → deny on a reviewable ground → ask for review → the denier tries to decide
// (422) → an uninvolved licensed reviewer reverses → fulfil → the patient reads what was delivered.
func TestAccessRequestWorkflow(t *testing.T) {
	for _, b := range storetest.Backends(t) {
		t.Run(b.Name, func(t *testing.T) {
			re := newRightsEnv(t, b)
			e := re.env
			// File: the server sets receipt, status, owner and the 30-day due date, whatever the client sent.
			r := e.must(201, "POST", "/Task", re.pat, `{"resourceType":"Task","status":"completed","intent":"proposal","authoredOn":"2020-01-01",
				"code":{"coding":[{"system":"`+rights.SystemRequestType+`","code":"access-copy"}]},"for":{"reference":"Patient/p1"},
				"input":[{"type":{"coding":[{"system":"`+rights.SystemAccessInput+`","code":"requested-format"}]},"valueCode":"application/pdf"}]}`)
			id := str(t, r, "id")
			if str(t, r, "status") != "ready" || str(t, r, "authoredOn") != "2026-03-02T15:00:00+00:00" || str(t, r, "restriction", "period", "end") != "2026-04-01" ||
				str(t, r, "owner", "reference") != "Organization/records" || str(t, r, "requester", "reference") != "Patient/p1" {
				t.Fatalf("filed: %s", r.body)
			}
			task := "/Task/" + id
			// Another patient does not see it; this patient may not move it.
			e.must(404, "GET", task, re.other, "")
			cur := e.must(200, "GET", task, re.pat, "").json(t)
			cur.Set("status", "in-progress")
			cur.Set("businessStatus", obj(t, `{"coding":[{"system":"`+rights.SystemAccessStatus+`","code":"in-review"}]}`))
			rule(t, e.do("PUT", task, re.pat, string(fhir.AppendJSON(nil, cur))), 403, "may only cancel")
			// Start review (PUT with the new status pair) and due-date search.
			r = e.must(200, "PUT", task, re.clerk, string(fhir.AppendJSON(nil, cur)))
			if str(t, r, "businessStatus", "coding", "0", "code") != "in-review" {
				t.Fatalf("start review: %s", r.body)
			}
			if ids := bundleIDs(t, e.must(200, "GET", "/Task?due-date=le2026-04-01&status=ready,in-progress", re.clerk, ""), "match"); len(ids) != 1 {
				t.Fatalf("open requests due by 1 April: %v", ids)
			}
			// Extend once, on day 20; not twice.
			re.now = re.now.AddDate(0, 0, 20)
			r = e.must(200, "POST", task+"/$extend", re.clerk, params("reason", "the records are in off-site storage", "due", "2026-04-20"))
			if str(t, r, "restriction", "period", "end") != "2026-04-20" {
				t.Fatalf("extended: %s", r.body)
			}
			rule(t, e.do("POST", task+"/$extend", re.clerk, params("reason", "still", "due", "2026-04-30")), 422, "extended once")
			notices := bundleIDs(t, e.must(200, "GET", "/Communication?about="+url.QueryEscape("Task/"+id), re.pat, ""), "match")
			if len(notices) != 1 {
				t.Fatalf("the patient sees the extension notice: %v", notices)
			}
			// Deny on a reviewable ground; the notice is composed and sent.
			rule(t, e.do("POST", task+"/$deny", re.denier, params("ground", "endanger-life-safety")), 422, "basis")
			r = e.must(200, "POST", task+"/$deny", re.denier, params("ground", "endanger-life-safety", "basis", "a clinician judged that access now would endanger your safety"))
			if str(t, r, "businessStatus", "coding", "0", "code") != "denied" || str(t, r, "statusReason", "coding", "0", "code") != "endanger-life-safety" {
				t.Fatalf("denied: %s", r.body)
			}
			// Review: asked by the patient; the denier may not decide; an unlicensed clerk may not; the reviewer may.
			r = e.must(201, "POST", task+"/$request-review", re.pat, "")
			review := "/Task/" + str(t, r, "id")
			if str(t, r, "partOf", "0", "reference") != "Task/"+id {
				t.Fatalf("review task: %s", r.body)
			}
			rule(t, e.do("POST", task+"/$request-review", re.pat, ""), 422, "already asked")
			rule(t, e.do("POST", review+"/$decide-review", re.denier, params("outcome", "reversed", "rationale", "x")), 422, "the reviewer took part in the denial")
			rule(t, e.do("POST", review+"/$decide-review", re.clerk, params("outcome", "reversed", "rationale", "x")), 403, "licensed")
			rule(t, e.do("POST", review+"/$decide-review", re.reviewer, params("outcome", "reversed", "rationale", "x", "verdict", "y")), 400, "takes no parameter")
			e.must(200, "POST", review+"/$decide-review", re.reviewer, params("outcome", "reversed", "rationale", "the risk has passed"))
			r = e.must(200, "GET", task, re.pat, "")
			if str(t, r, "status") != "in-progress" || str(t, r, "businessStatus", "coding", "0", "code") != "in-review" || str(t, r, "statusReason", "coding", "0", "code") != "" {
				t.Fatalf("a reversal reopens the request (without the denial's ground as its status reason): %s", r.body)
			}
			// Fulfil; another patient's record cannot be delivered.
			rule(t, e.do("POST", task+"/$fulfil", re.clerk, params("delivered", `{"valueReference":{"reference":"DocumentReference/d9"}}`)), 422, "not a record of Patient/p1")
			// The patient asked for PDF: plain text is refused unless the format agreed with the patient is stated.
			rule(t, e.do("POST", task+"/$fulfil", re.clerk, params("delivered", `{"valueReference":{"reference":"DocumentReference/d1"}}`)), 422, "asked for application/pdf")
			r = e.must(200, "POST", task+"/$fulfil", re.clerk, params("delivered", `{"valueReference":{"reference":"DocumentReference/d1"}}`,
				"format-agreed", "plain text, agreed with the patient by phone"))
			if str(t, r, "status") != "completed" || str(t, r, "businessStatus", "coding", "0", "code") != "fulfilled" {
				t.Fatalf("fulfilled: %s", r.body)
			}
			e.must(200, "GET", "/DocumentReference/d1", re.pat, "")
			// Every letter reached the patient: extension, denial, review decision, fulfilment.
			var kinds []string
			for _, c := range bundleIDs(t, e.must(200, "GET", "/Communication?subject=Patient/p1&_count=50", re.pat, ""), "match") {
				rr := e.must(200, "GET", "/"+c, re.pat, "")
				kinds = append(kinds, str(t, rr, "topic", "coding", "0", "code"))
			}
			for _, k := range []string{rights.NoticeExtension, rights.NoticeDenial, rights.NoticeReviewDecision, rights.NoticeFulfilled} {
				if !strings.Contains(strings.Join(kinds, " "), k) {
					t.Errorf("the patient got no %s (got %v)", k, kinds)
				}
			}
			// Kept, never deleted.
			rule(t, e.do("DELETE", task, re.sys, ""), 422, "never deleted")
		})
	}
}

func obj(t *testing.T, s string) *fhir.Object {
	t.Helper()
	v, err := fhir.ParseJSON([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return v.(*fhir.Object)
}

func correctionBundle(category, extra string) string {
	return `{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Communication","status":"completed",
		"category":[{"coding":[{"system":"` + rights.SystemCorrectionComm + `","code":"` + category + `"}]}],
		"subject":{"reference":"Patient/p1"}` + extra + `}}]}`
}

// TestAmendmentWorkflow is the right to amend end to end over HTTP: file by $correctionrequest → in-review →
// deny → disagree → rebut → a practitioner's search for the disputed record returns the request, the denial, the
// statement and the rebuttal with it; then a second request accepted → the amended document replaces the
// original (now superseded), with Provenance, and the person the patient named is notified.
func TestAmendmentWorkflow(t *testing.T) {
	for _, b := range storetest.Backends(t) {
		t.Run(b.Name, func(t *testing.T) {
			re := newRightsEnv(t, b)
			e := re.env
			// Not someone else's record.
			rule(t, e.do("POST", "/Communication/$correctionrequest", re.pat, correctionBundle("medRecCxReq",
				`,"payload":[{"contentString":"wrong"},{"contentReference":{"reference":"DocumentReference/d9"}}]`)), 422, "not one of your records")
			r := e.must(201, "POST", "/Communication/$correctionrequest", re.pat, correctionBundle("medRecCxReq",
				`,"payload":[{"contentString":"My allergy is to sulfa, not penicillin."},{"contentReference":{"reference":"DocumentReference/d1"}}]`))
			var out struct {
				Type  string
				Entry []struct{ Resource map[string]any }
			}
			json.Unmarshal(r.body, &out)
			if out.Type != "collection" || len(out.Entry) != 2 || out.Entry[1].Resource["resourceType"] != "Task" {
				t.Fatalf("$correctionrequest answers with the Communication and its Task: %s", r.body)
			}
			id := out.Entry[1].Resource["id"].(string)
			commID := out.Entry[0].Resource["id"].(string)
			task := "/Task/" + id
			r = e.must(200, "GET", task, re.clerk, "")
			if str(t, r, "businessStatus", "coding", "0", "code") != "queued" || str(t, r, "input", "0", "valueReference", "reference") != "Communication/"+commID ||
				str(t, r, "extension", "1", "valuePeriod", "end") != "2026-05-01" || str(t, r, "focus", "reference") != "DocumentReference/d1" {
				t.Fatalf("the amendment Task (60-day due date in requestedPeriod): %s", r.body)
			}
			if c := e.must(200, "GET", "/Communication/"+commID, re.pat, ""); str(t, c, "about", "0", "reference") != "Task/"+id {
				t.Fatalf("the Communication points at its Task: %s", c.body)
			}
			// A later message joins the thread: about the Task, partOf the first message, in response to the last.
			fr := e.must(200, "POST", "/Communication/$correctionrequest", re.pat, correctionBundle("medRecCxReq",
				`,"partOf":[{"reference":"Communication/`+commID+`"}],"payload":[{"contentString":"I attach the pharmacy's letter."}]`))
			json.Unmarshal(fr.body, &out)
			follow := out.Entry[0].Resource
			if out.Entry[1].Resource["id"] != id || !strings.Contains(fmt.Sprint(follow["about"]), "Task/"+id) || !strings.Contains(fmt.Sprint(follow["inResponseTo"]), "Communication/"+commID) {
				t.Fatalf("a follow-up joins the thread of Task/%s in response to Communication/%s: %s", id, commID, fr.body)
			}
			// A disagreement before any denial.
			rule(t, e.do("POST", "/Communication/$correctionrequest", re.pat, correctionBundle("medRecCxDenialDisagree",
				`,"about":[{"reference":"Task/`+id+`"}],"payload":[{"contentString":"I disagree"}]`)), 422, "needs a prior denial")
			// In review, then denied.
			cur := r.json(t)
			cur.Set("status", "in-progress")
			cur.Set("businessStatus", obj(t, `{"coding":[{"system":"`+rights.SystemCorrectionStatus+`","code":"in-review"}]}`))
			e.must(200, "PUT", task, re.clerk, string(fhir.AppendJSON(nil, cur)))
			r = e.must(200, "POST", task+"/$deny", re.denier, params("ground", "accurate-and-complete", "basis", "the allergy was confirmed by a skin test"))
			if str(t, r, "businessStatus", "coding", "0", "code") != "denied" || str(t, r, "output", "0", "type", "coding", "0", "code") != "medRecCxReqResolution" {
				t.Fatalf("denied: %s", r.body)
			}
			// The patient disagrees; the records office rebuts.
			r = e.must(201, "POST", "/Communication/$correctionrequest", re.pat, correctionBundle("medRecCxDenialDisagree",
				`,"about":[{"reference":"Task/`+id+`"}],"payload":[{"contentString":"I disagree: the skin test was for another drug."}]`))
			json.Unmarshal(r.body, &out)
			disagreement := "/Task/" + out.Entry[1].Resource["id"].(string)
			if out.Entry[1].Resource["reasonReference"].(map[string]any)["reference"] != "Task/"+id {
				t.Fatalf("disagreement Task: %s", r.body)
			}
			rule(t, e.do("POST", "/Communication/$correctionrequest", re.pat, correctionBundle("medRecCxDenialDisagree",
				`,"about":[{"reference":"Task/`+id+`"}],"payload":[{"contentString":"again"}]`)), 422, "already filed")
			e.must(200, "POST", disagreement+"/$rebut", re.clerk, params("text", "The skin test of 2019 was for penicillin; the result stands."))
			if r := e.must(200, "GET", task, re.pat, ""); str(t, r, "businessStatus", "coding", "0", "code") != "completed" {
				t.Fatalf("original request after the rebuttal: %s", r.body)
			}
			// The dispute stays with the record: a practitioner's search returns all four documents with it, a read
			// points to them, and relatesto finds them.
			r = e.must(200, "GET", "/DocumentReference?_id=d1", re.clerk, "")
			inc := bundleIDs(t, r, "include")
			if len(inc) != 4 {
				t.Fatalf("the disputed record's search includes request, denial, statement, rebuttal: %v\n%s", inc, r.body)
			}
			roles := ""
			for _, d := range inc {
				roles += " " + str(t, e.must(200, "GET", "/"+d, re.clerk, ""), "meta", "tag", "0", "code")
			}
			for _, role := range []string{rights.DisputeRequest, rights.DisputeDenial, rights.DisputeDisagreement, rights.DisputeRebuttal} {
				if !strings.Contains(roles, role) {
					t.Errorf("no %s among the included documents (%s)", role, roles)
				}
			}
			if l := e.must(200, "GET", "/DocumentReference/d1", re.pat, "").header.Get("Link"); !strings.Contains(l, "relatesto=DocumentReference%2Fd1") {
				t.Errorf("a read of the disputed record links to its dispute: %q", l)
			}
			if n := len(bundleIDs(t, e.must(200, "GET", "/DocumentReference?relatesto=DocumentReference/d1", re.pat, ""), "match")); n != 4 {
				t.Errorf("relatesto finds %d dispute documents, want 4", n)
			}
			// A backend system's search is a disclosure: with a statement of disagreement on file, all of it goes.
			if n := len(bundleIDs(t, e.must(200, "GET", "/DocumentReference?_id=d1", re.sys, ""), "include")); n != 4 {
				t.Errorf("a disclosure carries %d dispute documents, want 4", n)
			}
			// The dispute documents and letters are kept as they are.
			rule(t, e.do("DELETE", "/"+inc[0], re.sys, ""), 422, "never deleted")

			// A second request, accepted: the amended document replaces the original.
			r = e.must(201, "POST", "/Communication/$correctionrequest", re.pat, correctionBundle("medRecCxReq",
				`,"payload":[{"contentString":"My weight is 80 kg, not 90."},{"contentReference":{"reference":"DocumentReference/d2"}}]`))
			json.Unmarshal(r.body, &out)
			task2 := "/Task/" + out.Entry[1].Resource["id"].(string)
			rule(t, e.do("POST", task2+"/$accept", re.pat, params("mode", "replaces")), 403, "records office")
			r = e.must(200, "POST", task2+"/$accept", re.clerk, params("mode", "replaces",
				"amended", `{"resource":{"resourceType":"DocumentReference","status":"current","content":[{"attachment":{"contentType":"text/plain","data":"V2VpZ2h0OiA4MCBrZw=="}}]}}`,
				"notify", `{"valueReference":{"reference":"Practitioner/clerk"}}`))
			if str(t, r, "status") != "completed" || str(t, r, "businessStatus", "coding", "0", "code") != "amendment-completed" {
				t.Fatalf("accepted: %s", r.body)
			}
			if d2 := e.must(200, "GET", "/DocumentReference/d2", re.pat, ""); str(t, d2, "status") != "superseded" {
				t.Fatalf("the original is superseded: %s", d2.body)
			}
			amended := bundleIDs(t, e.must(200, "GET", "/DocumentReference?relatesto=DocumentReference/d2&relation=replaces", re.pat, ""), "match")
			if len(amended) != 1 || str(t, e.must(200, "GET", "/"+amended[0], re.pat, ""), "docStatus") != "amended" {
				t.Fatalf("the amended document: %v", amended)
			}
			if n := len(bundleIDs(t, e.must(200, "GET", "/Provenance?target="+amended[0], re.clerk, ""), "match")); n != 1 {
				t.Errorf("Provenance of the amendment: %d", n)
			}
			if n := len(bundleIDs(t, e.must(200, "GET", "/Communication?recipient=Practitioner/clerk", re.clerk, ""), "match")); n != 1 {
				t.Errorf("the named person is notified: %d", n)
			}
		})
	}
}

// TestRepresentativeAndDisclosure: a personal representative (a RelatedPerson's token for the patient) files an
// amendment request through the $correction-request spelling; after a denial with no statement of disagreement,
// a disclosure outside the provider carries the request and the denial only once the patient asked for that
// (164.526(d)(1)(iii), (d)(5)); the provider's staff see them with the record either way.
func TestRepresentativeAndDisclosure(t *testing.T) {
	for _, b := range storetest.Backends(t) {
		t.Run(b.Name, func(t *testing.T) {
			re := newRightsEnv(t, b)
			e := re.env
			e.must(201, "PUT", "/RelatedPerson/mum", re.sys, `{"resourceType":"RelatedPerson","id":"mum","patient":{"reference":"Patient/p1"}}`)
			rep := e.tok(auth.Grant{Subject: "RelatedPerson/mum", FHIRUser: "RelatedPerson/mum", Patient: "p1", Scope: "patient/*.cruds"})
			rule(t, e.do("POST", "/Communication/$correction-request", rep, correctionBundle("medRecCxReq",
				`,"payload":[{"contentString":"wrong"},{"contentReference":{"reference":"DocumentReference/d9"}}]`)), 422, "not one of your records")
			rule(t, e.do("POST", "/Communication/$correction-request", rep, strings.Replace(correctionBundle("medRecCxReq",
				`,"payload":[{"contentString":"wrong"}]`), "Patient/p1", "Patient/p2", 1)), 403, "their own record only")
			r := e.must(201, "POST", "/Communication/$correction-request", rep, correctionBundle("medRecCxReq",
				`,"payload":[{"contentString":"My weight is 80 kg."},{"contentReference":{"reference":"DocumentReference/d2"}}]`))
			var out struct {
				Entry []struct{ Resource map[string]any }
			}
			json.Unmarshal(r.body, &out)
			task := "/Task/" + out.Entry[1].Resource["id"].(string)
			if req := out.Entry[1].Resource["requester"].(map[string]any)["reference"]; req != "RelatedPerson/mum" {
				t.Fatalf("the representative is the requester: %v", req)
			}
			e.must(200, "POST", task+"/$deny", re.denier, params("ground", "accurate-and-complete", "basis", "the weight was measured twice"))
			disclosed := func() int {
				return len(bundleIDs(t, e.must(200, "GET", "/DocumentReference?_id=d2", re.sys, ""), "include"))
			}
			if n := len(bundleIDs(t, e.must(200, "GET", "/DocumentReference?_id=d2", re.clerk, ""), "include")); n != 2 {
				t.Fatalf("staff see the request and the denial with the record: %d", n)
			}
			if n := disclosed(); n != 0 {
				t.Fatalf("without a statement of disagreement and unasked, a disclosure carries %d dispute documents", n)
			}
			// The patient asks that they go along: an extension on their request.
			cur := e.must(200, "GET", task, re.pat, "").json(t)
			exts, _ := cur.Get("extension")
			list, _ := exts.([]any)
			cur.Set("extension", append(list, obj(t, `{"url":"`+rights.ExtDiscloseDispute+`","valueBoolean":true}`)))
			e.must(200, "PUT", task, re.pat, string(fhir.AppendJSON(nil, cur)))
			if n := disclosed(); n != 2 {
				t.Fatalf("asked, a disclosure carries the request and the denial: %d", n)
			}
		})
	}
}

// TestEverythingAndRestrictedRecords: Patient/$everything returns the patient's compartment with the shared
// resources it points to, pages, filters by _type and _since; psychotherapy notes never reach a patient token by
// any path (rights.md §8), while the provider's staff see them.
func TestEverythingAndRestrictedRecords(t *testing.T) {
	each(t, func(t *testing.T, e *env) {
		sys := e.system()
		for _, r := range []string{
			`{"resourceType":"Patient","id":"p1"}`,
			`{"resourceType":"Patient","id":"p2"}`,
			`{"resourceType":"Practitioner","id":"doc"}`,
			`{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"weight"},"subject":{"reference":"Patient/p1"},"performer":[{"reference":"Practitioner/doc"}]}`,
			`{"resourceType":"Observation","id":"o2","status":"final","code":{"text":"height"},"subject":{"reference":"Patient/p1"}}`,
			`{"resourceType":"Observation","id":"o9","status":"final","code":{"text":"weight"},"subject":{"reference":"Patient/p2"}}`,
			`{"resourceType":"DocumentReference","id":"psy","status":"current","subject":{"reference":"Patient/p1"},
				"securityLabel":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"PSYTHPN"}]}],
				"content":[{"attachment":{"contentType":"text/plain","data":"bm90ZXM="}}]}`,
			`{"resourceType":"Observation","id":"lit","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"},
				"meta":{"security":[{"system":"` + fhir.CanonicalBase + `/CodeSystem/security-label","code":"litigation-compilation"}]}}`,
		} {
			var o struct{ ResourceType, ID string }
			json.Unmarshal([]byte(r), &o)
			e.must(201, "PUT", "/"+o.ResourceType+"/"+o.ID, sys, r)
		}
		pat := e.patient("p1", "patient/*.rs")
		r := e.must(200, "GET", "/Patient/p1/$everything", pat, "")
		got := bundleIDs(t, r, "match")
		if strings.Join(got, " ") != "Patient/p1 Observation/o1 Observation/o2" {
			t.Errorf("the patient's everything: %v", got)
		}
		if inc := bundleIDs(t, r, "include"); strings.Join(inc, " ") != "Practitioner/doc" {
			t.Errorf("shared resources it points to: %v", inc)
		}
		// The restricted records by every other path too.
		e.must(404, "GET", "/DocumentReference/psy", pat, "")
		e.must(404, "GET", "/Observation/lit", pat, "")
		e.must(404, "GET", "/DocumentReference/psy/_history", pat, "")
		if ids := bundleIDs(t, e.must(200, "GET", "/DocumentReference?patient=p1", pat, ""), ""); len(ids) != 0 {
			t.Errorf("a patient's search found restricted records: %v", ids)
		}
		if ids := bundleIDs(t, e.must(200, "GET", "/Patient?_id=p1&_revinclude=DocumentReference:subject&_revinclude=Observation:subject", pat, ""), ""); strings.Contains(strings.Join(ids, " "), "psy") || strings.Contains(strings.Join(ids, " "), "lit") {
			t.Errorf("a patient's _revinclude found restricted records: %v", ids)
		}
		// The provider's staff see them.
		doc := e.tok(auth.Grant{Subject: "doc", FHIRUser: "Practitioner/doc", Scope: "user/*.rs"})
		if got := bundleIDs(t, e.must(200, "GET", "/Patient/p1/$everything", doc, ""), "match"); len(got) != 5 {
			t.Errorf("staff see all five of the patient's records: %v", got)
		}
		e.must(200, "GET", "/DocumentReference/psy", doc, "")
		// Another patient's everything; paging; _type; _since; unknown parameters.
		e.must(404, "GET", "/Patient/p2/$everything", pat, "")
		r = e.must(200, "GET", "/Patient/p1/$everything?_count=2", pat, "")
		next := link(t, r, "next")
		if len(bundleIDs(t, r, "match")) != 2 || next == "" {
			t.Fatalf("first page of two: %s", r.body)
		}
		if got := bundleIDs(t, e.must(200, "GET", next, pat, ""), "match"); strings.Join(got, " ") != "Observation/o2" {
			t.Errorf("second page: %v", got)
		}
		if got := bundleIDs(t, e.must(200, "GET", "/Patient/p1/$everything?_type=Observation", pat, ""), "match"); len(got) != 2 {
			t.Errorf("_type=Observation: %v", got)
		}
		if got := bundleIDs(t, e.must(200, "GET", "/Patient/p1/$everything?_since=2999-01-01T00:00:00Z", pat, ""), "match"); len(got) != 0 {
			t.Errorf("_since in the future: %v", got)
		}
		d, _ := outcome(t, e.must(400, "GET", "/Patient/p1/$everything?start=2020", pat, ""))
		if !strings.Contains(d, "takes _type, _since, _count") {
			t.Errorf("unknown parameter: %s", d)
		}
	})
}

// TestOverdueDeadlinesAndMetrics: open requests past due are found by the due-date search, by Overdue (carta
// overdue) and in the metric; the rules in force are visible to clients.
func TestOverdueDeadlinesAndMetrics(t *testing.T) {
	re := newRightsEnv(t, storetest.Backends(t)[0])
	e := re.env
	file := func(code string) string {
		r := e.must(201, "POST", "/Task", re.pat, `{"resourceType":"Task","status":"draft","intent":"order",
			"code":{"coding":[{"system":"`+rights.SystemRequestType+`","code":"`+code+`"}]},"for":{"reference":"Patient/p1"}}`)
		return str(t, r, "id")
	}
	late := file("access-copy")
	done := file("access-inspect")
	e.must(200, "POST", "/Task/"+done+"/$redirect", re.clerk, params("where", "Springfield General, records department"))
	re.now = re.now.AddDate(0, 0, 31) // 2 April: the 1 April due date has passed
	today := rights.DateOf(re.now, time.UTC).String()
	ids := bundleIDs(t, e.must(200, "GET", "/Task?due-date=lt"+today+"&status=ready,in-progress", re.clerk, ""), "match")
	if strings.Join(ids, " ") != "Task/"+late {
		t.Fatalf("overdue by search: %v", ids)
	}
	list, err := handlers.Overdue(t.Context(), e.store, rights.DateOf(re.now, time.UTC))
	if err != nil || len(list) != 1 || list[0].Task != "Task/"+late || list[0].DaysLate != 1 || list[0].Type != "access-copy" || list[0].Due != "2026-04-01" {
		t.Fatalf("Overdue: %+v %v", list, err)
	}
	m := e.must(200, "GET", e.srv.URL+"/metrics", "", "")
	if !strings.Contains(string(m.body), `carta_rights_overdue_requests{type="access-copy"} 1`) || !strings.Contains(string(m.body), `carta_rights_overdue_requests{type="access-inspect"} 0`) {
		t.Errorf("metrics:\n%s", m.body)
	}
	d := e.must(200, "GET", "/Task/$deadlines", re.pat, "")
	for _, want := range []string{`"HIPAA"`, `"access-copy"`, `"calendar-days"`, `"medRecCxReq"`} {
		if !strings.Contains(string(d.body), want) {
			t.Errorf("$deadlines lacks %s: %s", want, d.body)
		}
	}
}

// TestRightsDeclared: the CapabilityStatement declares the request profiles and the operations, whose
// OperationDefinitions and CodeSystems are served.
func TestRightsDeclared(t *testing.T) {
	e := newEnv(t, storetest.Backends(t)[0])
	if err := handlers.InstallDefinitions(t.Context(), e.store); err != nil {
		t.Fatal(err)
	}
	// Installing again changes nothing.
	if err := handlers.InstallDefinitions(t.Context(), e.store); err != nil {
		t.Fatal(err)
	}
	var cs struct {
		Rest []struct {
			Resource []struct {
				Type             string
				SupportedProfile []string
				Operation        []struct{ Name, Definition string }
			}
		}
	}
	json.Unmarshal(e.must(200, "GET", "/metadata", "", "").body, &cs)
	found := map[string]bool{}
	for _, r := range cs.Rest[0].Resource {
		for _, p := range r.SupportedProfile {
			found[r.Type+" "+p] = true
		}
		for _, o := range r.Operation {
			found[r.Type+" $"+o.Name] = true
			if strings.HasPrefix(o.Definition, fhir.CanonicalBase) {
				id := o.Definition[strings.LastIndex(o.Definition, "/")+1:]
				e.must(200, "GET", "/OperationDefinition/"+id, e.system(), "")
			}
		}
	}
	for _, want := range []string{"Task " + rights.ProfileAccessRequest, "Task " + rights.ProfileCorrectionTask, "Task $extend", "Task $deny",
		"Task $decide-review", "Communication $correctionrequest", "Patient $everything", "Task $deadlines"} {
		if !found[want] {
			t.Errorf("the CapabilityStatement does not declare %s", want)
		}
	}
	r := e.must(200, "GET", "/CodeSystem/access-denial-ground", e.system(), "")
	if !strings.Contains(string(r.body), "endanger-life-safety") || strings.Contains(string(r.body), `"clia"`) {
		t.Errorf("denial grounds: %s", r.body)
	}
	if h := bundleIDs(t, e.must(200, "GET", "/OperationDefinition/Task-extend/_history", e.system(), ""), ""); len(h) != 1 {
		t.Errorf("a second install wrote a new version: %v", h)
	}
}

// auditEvents are the AuditEvents a token finds for a patient, as "action interaction who [disclosure]" lines.
func auditLines(t *testing.T, e *env, tok, patient string) []string {
	t.Helper()
	e.h.FlushAudit()
	r := e.must(200, "GET", "/AuditEvent?patient="+patient+"&_count=200&_sort=date", tok, "")
	var b struct {
		Entry []struct {
			Resource struct {
				Action  string
				Subtype []struct{ Code string }
				Agent   []struct {
					Requestor bool
					Who       struct{ Reference, Display string }
				}
				Entity []struct{ What struct{ Reference string } }
			}
		}
	}
	json.Unmarshal(r.body, &b)
	var out []string
	for _, en := range b.Entry {
		ev := en.Resource
		line := ev.Action + " " + ev.Subtype[0].Code
		for _, a := range ev.Agent {
			if a.Requestor {
				line += " " + a.Who.Reference + a.Who.Display
			}
		}
		if len(ev.Subtype) > 1 {
			line += " " + ev.Subtype[1].Code
		}
		for _, x := range ev.Entity {
			line += " " + x.What.Reference
		}
		out = append(out, line)
	}
	return out
}

// TestAudit: changes are audited in their transaction, reads and searches by the batched writer; a patient lists
// who accessed their record and sees nothing of anyone else's; a backend's read is a disclosure, and an
// accounting-of-disclosures request is fulfilled from them.
func TestAudit(t *testing.T) {
	each(t, func(t *testing.T, e *env) {
		sys := e.system()
		e.must(201, "PUT", "/Patient/p1", sys, `{"resourceType":"Patient","id":"p1"}`)
		e.must(201, "PUT", "/Patient/p2", sys, `{"resourceType":"Patient","id":"p2"}`)
		e.must(201, "PUT", "/Observation/o1", sys, `{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"}}`)
		e.must(201, "PUT", "/Observation/o2", sys, `{"resourceType":"Observation","id":"o2","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p2"}}`)
		pat := e.patient("p1", "patient/*.cruds")
		doc := e.tok(auth.Grant{Subject: "doc", FHIRUser: "Practitioner/doc", ClientID: "ehr", Scope: "user/*.cruds"})
		e.must(200, "GET", "/Observation/o1", pat, "")
		e.must(200, "GET", "/Observation/o1", doc, "")
		e.must(200, "GET", "/Observation?subject=Patient/p1,Patient/p2", sys, "") // a backend: a disclosure, one event per patient
		e.must(200, "PUT", "/Observation/o1", doc, `{"resourceType":"Observation","id":"o1","status":"amended","code":{"text":"x"},"subject":{"reference":"Patient/p1"}}`)
		lines := auditLines(t, e, pat, "p1")
		joined := strings.Join(lines, "\n")
		for _, want := range []string{
			"C create client test Patient/p1 Observation/o1",
			"R read Patient/p1 Patient/p1 Observation/o1",
			"R read Practitioner/doc Patient/p1 Observation/o1",
			"R search-type client test disclosure Patient/p1 Observation/o1",
			"U update Practitioner/doc Patient/p1 Observation/o1",
		} {
			if !strings.Contains(joined, want) {
				t.Errorf("p1's audit trail lacks %q:\n%s", want, joined)
			}
		}
		if strings.Contains(joined, "o2") || strings.Contains(joined, "p2") {
			t.Errorf("p1's audit trail shows another patient:\n%s", joined)
		}
		// Reading the audit trail is not itself audited.
		if again := auditLines(t, e, pat, "p1"); len(again) != len(lines) {
			t.Errorf("listing the audit trail grew it: %d → %d", len(lines), len(again))
		}
		e.must(200, "GET", "/AuditEvent?patient=p2", e.patient("p2", "patient/*.rs"), "")
		if n := len(bundleIDs(t, e.must(200, "GET", "/AuditEvent?patient=p2", pat, ""), "match")); n != 0 {
			t.Errorf("p1 sees %d of p2's audit events", n)
		}
		// Staff searching the whole trail (no patient) find the backend's disclosure of p2 too, in an event of
		// its own: the journal row of that search named both patients.
		e.must(200, "GET", "/Observation/o2", sys, "")
		e.h.FlushAudit()
		all := e.must(200, "GET", "/AuditEvent?entity=Observation/o2", sys, "")
		if n := len(bundleIDs(t, all, "match")); n != 3 || strings.Contains(string(all.body), "Observation/o1") {
			t.Errorf("staff find %d events naming o2 (want its creation, the search and the read), or one mixing patients: %s", n, all.body)
		}
		// When converting everything would take longer than allowed, a staff search answers with what is
		// converted and says so; a patient's list is still complete.
		old := handlers.SetAuditSyncBudget(0)
		e.must(200, "GET", "/Observation/o2", sys, "")
		e.must(200, "GET", "/Observation/o1", sys, "")
		e.h.FlushAudit()
		if r := e.must(200, "GET", "/AuditEvent?entity=Observation/o2", sys, ""); !strings.Contains(string(r.body), `"incomplete"`) {
			t.Errorf("a search of all AuditEvents with rows left to convert does not warn: %s", r.body)
		}
		handlers.SetAuditSyncBudget(old)
		if r := e.must(200, "GET", "/AuditEvent?patient=p1&entity=Observation/o1&subtype=read", pat, ""); len(bundleIDs(t, r, "match")) != 3 || strings.Contains(string(r.body), `"incomplete"`) {
			t.Errorf("p1's list misses the last read of o1 (want the patient's own, the clinician's and the backend's): %s", r.body)
		}
		// A change that fails leaves no audit: a transaction with a bad entry.
		before := len(auditLines(t, e, sys, "p1"))
		e.must(400, "POST", "", sys, `{"resourceType":"Bundle","type":"transaction","entry":[
			{"resource":{"resourceType":"Observation","status":"final","code":{"text":"y"},"subject":{"reference":"Patient/p1"}},"request":{"method":"POST","url":"Observation"}},
			{"resource":{"resourceType":"Observation","status":"bogus"},"request":{"method":"POST","url":"Observation"}}]}`)
		if after := len(auditLines(t, e, sys, "p1")); after != before {
			t.Errorf("a rolled-back transaction left %d audit events", after-before)
		}
		// Accounting of disclosures, from the audit trail.
		r := e.must(201, "POST", "/Task", pat, `{"resourceType":"Task","status":"draft","intent":"order",
			"code":{"coding":[{"system":"`+rights.SystemRequestType+`","code":"accounting-of-disclosures"}]},"for":{"reference":"Patient/p1"}}`)
		if due := str(t, r, "restriction", "period", "end"); due == "" {
			t.Fatalf("accounting request without a due date: %s", r.body)
		}
		r = e.must(200, "POST", "/Task/"+str(t, r, "id")+"/$fulfil", doc, "")
		docRef := str(t, r, "output", "0", "valueReference", "reference")
		acc := e.must(200, "GET", "/"+docRef, pat, "")
		var d struct {
			Content []struct{ Attachment struct{ Data []byte } }
		}
		json.Unmarshal(acc.body, &d)
		if text := string(d.Content[0].Attachment.Data); !strings.Contains(text, "client test") || !strings.Contains(text, "Observation/o1") || strings.Contains(text, "Practitioner/doc") {
			t.Errorf("the accounting lists the backend's disclosure, not the clinician's use:\n%s", text)
		}
	})
}

// TestAuditConcurrentConversion: a patient listing their audit trail while staff search all AuditEvents (and the
// background converter runs) turns each read into exactly one AuditEvent — no duplicate, none lost.
func TestAuditConcurrentConversion(t *testing.T) {
	each(t, func(t *testing.T, e *env) {
		sys := e.system()
		for i := 1; i <= 6; i++ {
			e.must(201, "PUT", fmt.Sprintf("/Patient/p%d", i), sys, fmt.Sprintf(`{"resourceType":"Patient","id":"p%d"}`, i))
		}
		for i := 1; i <= 6; i++ {
			e.must(200, "GET", fmt.Sprintf("/Patient/p%d", i), sys, "")
		}
		e.h.FlushAudit()
		pat := e.patient("p1", "patient/*.rs")
		var wg sync.WaitGroup
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				tok, q := pat, "/AuditEvent?patient=p1"
				if g%2 == 1 {
					tok, q = sys, "/AuditEvent?subtype=read"
				}
				if r := e.do("GET", q, tok, ""); r.status != 200 {
					t.Errorf("GET %s: %d %s", q, r.status, r.body)
				}
			}(g)
		}
		wg.Wait()
		for i := 1; i <= 6; i++ {
			r := e.must(200, "GET", fmt.Sprintf("/AuditEvent?entity=Patient/p%d&subtype=read", i), sys, "")
			if n := len(bundleIDs(t, r, "match")); n != 1 {
				t.Errorf("the read of Patient/p%d became %d AuditEvents, want 1", i, n)
			}
		}
	})
}
