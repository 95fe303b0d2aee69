package handlers_test

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
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
	now                                     time.Time
	sys, pat, pat2, clerk, denier, reviewer string
	other                                   string // another patient's token
	rules                                   *rights.Rules
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
			if str(t, r, "status") != "in-progress" || str(t, r, "businessStatus", "coding", "0", "code") != "in-review" {
				t.Fatalf("a reversal reopens the request: %s", r.body)
			}
			// Fulfil; another patient's record cannot be delivered.
			rule(t, e.do("POST", task+"/$fulfil", re.clerk, params("delivered", `{"valueReference":{"reference":"DocumentReference/d9"}}`)), 422, "not a record of Patient/p1")
			r = e.must(200, "POST", task+"/$fulfil", re.clerk, params("delivered", `{"valueReference":{"reference":"DocumentReference/d1"}}`))
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
