package rights

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/carta-fhir/carta/fhir"
)

// day0 is the receipt instant of the tests' requests: 2026-03-02 10:00 in New York.
var ny, _ = time.LoadLocation("America/New_York")
var day0 = time.Date(2026, 3, 2, 10, 0, 0, 0, ny)

type fixture struct {
	*Rules
	now time.Time
	ids int
}

func newFixture(profiles ...Profile) *fixture {
	f := &fixture{now: day0}
	f.Rules = New(Config{Loc: ny, Profiles: profiles, Owner: "Organization/records", OwnerDisplay: "Records office",
		Contact: Contact{Name: "Privacy Officer", Phone: "+1 555 0100", Complaint: "Write to the Privacy Officer.",
			ReviewHowTo: "Ask in your app ($request-review).", DisagreeHowTo: "File a statement in your app."},
		StatementMaxWords: 20})
	f.Now = func() time.Time { return f.now }
	f.NewID = func() string { f.ids++; return fmt.Sprintf("id%d", f.ids) }
	return f
}

func (f *fixture) day(n int) { f.now = day0.AddDate(0, 0, n) }

var (
	patient = Actor{Role: RolePatient, Ref: "Patient/p1", Patient: "p1"}
	other   = Actor{Role: RolePatient, Ref: "Patient/p2", Patient: "p2"}
	clerk   = Actor{Role: RoleFulfiller, Ref: "Practitioner/clerk"}
	doctor  = Actor{Role: RoleFulfiller, Ref: "Practitioner/doc"}
)

func parse(t *testing.T, s string) *fhir.Object {
	t.Helper()
	o, err := fhir.ParseResource([]byte(s), "")
	if err != nil {
		t.Fatalf("%v\n%s", err, s)
	}
	return o
}

func accessTask(t *testing.T, code string, inputs string) *fhir.Object {
	return parse(t, `{"resourceType":"Task","id":"t1","status":"draft","intent":"proposal","authoredOn":"2020-01-01",
		"code":{"coding":[{"system":"`+SystemRequestType+`","code":"`+code+`"}]},"for":{"reference":"Patient/p1"}`+inputs+`}`)
}

// valid checks what every written resource must be: valid R4, and the IG invariants for Tasks.
func valid(t *testing.T, p *Plan) {
	t.Helper()
	check := func(o *fhir.Object) {
		t.Helper()
		raw := fhir.AppendJSON(nil, o)
		if _, err := fhir.ParseResource(raw, ""); err != nil {
			t.Errorf("invalid %s: %v\n%s", o.String("resourceType"), err, raw)
		}
		if o.String("resourceType") == "Task" {
			if err := CheckInvariants(o); err != nil {
				t.Errorf("Task breaks an invariant: %v\n%s", err, raw)
			}
		}
	}
	if p.Task != nil {
		check(p.Task)
	}
	for _, w := range p.Writes {
		check(w.Resource)
	}
}

func wantRule(t *testing.T, err error, status int, text string) {
	t.Helper()
	fe, ok := fhir.AsError(err)
	if !ok || fe.Status != status || !strings.Contains(err.Error(), text) {
		t.Fatalf("want %d saying %q, got %v", status, text, err)
	}
}

func (f *fixture) file(t *testing.T, task *fhir.Object) *fhir.Object {
	t.Helper()
	p, err := f.File(task, patient)
	if err != nil {
		t.Fatal(err)
	}
	valid(t, p)
	return p.Task
}

func TestFilingSetsTheClock(t *testing.T) {
	f := newFixture()
	task := f.file(t, accessTask(t, CodeAccessCopy, ""))
	if task.String("authoredOn") != "2026-03-02T10:00:00-05:00" || task.String("intent") != "order" || task.String("status") != "ready" {
		t.Fatalf("server fields: %s", fhir.AppendJSON(nil, task))
	}
	if got := dueOf(task); got != "2026-04-01" {
		t.Errorf("due on day 0 + 30 = 2026-04-01, got %s", got)
	}
	dl := extension(task, ExtDeadline)
	if subValue(dl, "initialDue") != "2026-04-01" || subValue(dl, "ruleSet") != "HIPAA" {
		t.Errorf("deadline extension: %s", fhir.AppendJSON(nil, dl))
	}
	if refOf(task, "requester") != "Patient/p1" || refOf(task, "owner") != "Organization/records" {
		t.Errorf("requester/owner: %s", fhir.AppendJSON(nil, task))
	}
	// The day counts in the provider's zone: 23:30 in New York is already the next day in UTC.
	f.now = time.Date(2026, 3, 2, 23, 30, 0, 0, ny)
	if got := dueOf(f.file(t, accessTask(t, CodeAccessCopy, ""))); got != "2026-04-01" {
		t.Errorf("late-evening receipt due %s, want 2026-04-01", got)
	}
	// A plain Task is left alone.
	if p, err := f.File(parse(t, `{"resourceType":"Task","status":"draft","intent":"order"}`), patient); p != nil || err != nil {
		t.Errorf("a plain Task got %v %v", p, err)
	}
	// Someone else's record; a stranger as requester; an output; a directed copy without its directive.
	_, err := f.File(accessTask(t, CodeAccessCopy, ""), other)
	wantRule(t, err, 403, "their own record")
	_, err = f.File(accessTask(t, CodeAccessCopy, `,"requester":{"reference":"Patient/p9"}`), patient)
	wantRule(t, err, 422, "the requester is the person filing")
	_, err = f.File(accessTask(t, CodeAccessCopy, `,"output":[{"type":{"text":"x"},"valueString":"y"}]`), patient)
	wantRule(t, err, 403, "no output")
	_, err = f.File(accessTask(t, CodeAccessDirected, `,"input":[{"type":{"coding":[{"system":"`+SystemAccessInput+`","code":"recipient"}]},"valueString":"My PHR"}]`), patient)
	wantRule(t, err, 422, "destination")
	_, err = f.File(accessTask(t, CodeAccessCopy, `,"input":[{"type":{"coding":[{"system":"`+SystemAccessInput+`","code":"delivery"}]},"valueCode":"pigeon"}]`), patient)
	wantRule(t, err, 422, "delivery is one of")
	_, err = f.File(parse(t, `{"resourceType":"Task","status":"draft","intent":"order","code":{"coding":[{"system":"`+SystemRequestType+`","code":"access-everything"}]}}`), patient)
	wantRule(t, err, 400, "is not a request type")
}

func TestProfilesEarliestDueWins(t *testing.T) {
	ca, _ := ProfileByCode("US-CA")
	tx, _ := ProfileByCode("US-TX")
	f := newFixture(ca, tx)
	copyTask := f.file(t, accessTask(t, CodeAccessCopy, ""))
	// California 15 days beats Texas 15 business days and HIPAA 30.
	if dueOf(copyTask) != "2026-03-17" || subValue(extension(copyTask, ExtDeadline), "ruleSet") != "US-CA" {
		t.Errorf("copy: due %s by %s", dueOf(copyTask), subValue(extension(copyTask, ExtDeadline), "ruleSet"))
	}
	// California inspection: 5 working days from Monday 2 March → Monday 9 March.
	if got := dueOf(f.file(t, accessTask(t, CodeAccessInspect, ""))); got != "2026-03-09" {
		t.Errorf("inspection due %s, want 2026-03-09", got)
	}
	// Texas alone, paper copy: its electronic-only clock does not apply; HIPAA's 30 days do.
	f = newFixture(tx)
	paper := `,"input":[{"type":{"coding":[{"system":"` + SystemAccessInput + `","code":"requested-format"}]},"valueCode":"paper"}]`
	if got := dueOf(f.file(t, accessTask(t, CodeAccessCopy, paper))); got != "2026-04-01" {
		t.Errorf("Texas paper copy due %s, want HIPAA's 2026-04-01", got)
	}
	if got := dueOf(f.file(t, accessTask(t, CodeAccessCopy, ""))); got != "2026-03-23" {
		t.Errorf("Texas electronic copy: 15 business days from Monday 2 March is Monday 23 March, got %s", got)
	}
	// A state clock without an extension leaves none to give.
	f = newFixture(ca)
	task := f.file(t, accessTask(t, CodeAccessCopy, ""))
	_, err := f.Extend(task, clerk, "backlog", "2026-03-20")
	wantRule(t, err, 422, "allow no extension")
}

func TestBusinessDaysSkipHolidays(t *testing.T) {
	p := Profile{Code: "X", Clocks: map[string]Clock{CodeAccessCopy: {Days: 3, BusinessDays: true}}, Holidays: []Date{{2026, 3, 4}}}
	// Monday 2 March + 3 business days, Wednesday 4 March a holiday: Tuesday 3, Thursday 5, Friday 6.
	d, ok := ComputeDeadline([]Profile{p}, CodeAccessCopy, Date{2026, 3, 2}, true)
	if !ok || d.Due != (Date{2026, 3, 6}) {
		t.Errorf("due %v, want 2026-03-06", d.Due)
	}
	// Over a weekend: Friday 6 March + 1 = Monday 9 March.
	p.Clocks[CodeAccessCopy] = Clock{Days: 1, BusinessDays: true}
	if d, _ := ComputeDeadline([]Profile{p}, CodeAccessCopy, Date{2026, 3, 6}, true); d.Due != (Date{2026, 3, 9}) {
		t.Errorf("over a weekend: %v", d.Due)
	}
	// Federal holidays, observed: 4 July 2026 is a Saturday, observed Friday 3 July; Thanksgiving 26 Nov 2026.
	for _, h := range []Date{{2026, 7, 3}, {2026, 11, 26}, {2026, 1, 19}, {2026, 5, 25}, {2027, 12, 31}} {
		if !isFederalHoliday(h) {
			t.Errorf("%v should be a federal holiday", h)
		}
	}
	if isFederalHoliday(Date{2026, 7, 4}) || isFederalHoliday(Date{2026, 3, 2}) {
		t.Error("a Saturday holiday is observed on the Friday; an ordinary Monday is no holiday")
	}
}

func TestOneExtensionOnOrBeforeTheDueDate(t *testing.T) {
	for _, tc := range []struct {
		day  int
		want string // "" accepted, else the refusal
	}{{0, ""}, {29, ""}, {30, ""}, {31, "on or before the due date 2026-04-01"}} {
		t.Run(fmt.Sprintf("day%d", tc.day), func(t *testing.T) {
			f := newFixture()
			task := f.file(t, accessTask(t, CodeAccessCopy, ""))
			f.day(tc.day)
			p, err := f.Extend(task, clerk, "records are in off-site storage", "2026-05-01")
			if tc.want != "" {
				wantRule(t, err, 422, tc.want)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			valid(t, p)
			dl := extension(p.Task, ExtDeadline)
			if dueOf(p.Task) != "2026-05-01" || subValue(dl, "extendedDue") != "2026-05-01" || subValue(dl, "initialDue") != "2026-04-01" || subValue(dl, "extensionReason") == "" {
				t.Fatalf("after extension: %s", fhir.AppendJSON(nil, p.Task))
			}
			if len(p.Writes) != 1 || p.Writes[0].Type != "Communication" || subValue(dl, "extensionNotice") != "Communication/"+p.Writes[0].ID {
				t.Fatalf("the patient is sent the notice: %+v", p.Writes)
			}
			if text := Text(p.Writes[0].Resource); !strings.Contains(text, "2026-05-01") || !strings.Contains(text, "off-site storage") {
				t.Errorf("the notice gives the reason and the new date: %s", text)
			}
			_, err = f.Extend(p.Task, clerk, "still busy", "2026-05-01")
			wantRule(t, err, 422, "extended once")
		})
	}
	f := newFixture()
	task := f.file(t, accessTask(t, CodeAccessCopy, ""))
	_, err := f.Extend(task, clerk, "busy", "2026-05-02")
	wantRule(t, err, 422, "at most 30 days: the latest date is 2026-05-01")
	_, err = f.Extend(task, clerk, "", "2026-04-20")
	wantRule(t, err, 422, "written reason")
	_, err = f.Extend(task, clerk, "busy", "")
	wantRule(t, err, 422, "new date")
	_, err = f.Extend(task, patient, "busy", "2026-04-20")
	wantRule(t, err, 403, "records office")
}

func denyAll() DenyParams {
	return DenyParams{Ground: "endanger-life-safety", Basis: "a clinician judged that access would endanger you"}
}

func TestDenialNoticeParts(t *testing.T) {
	f := newFixture()
	task := f.file(t, accessTask(t, CodeAccessCopy, ""))
	p, err := f.Deny(task, doctor, denyAll(), Dispute{})
	if err != nil {
		t.Fatal(err)
	}
	valid(t, p)
	if step(p.Task, KindAccess) != (Step{StatusCompleted, BSDenied}) || codeIn(p.Task, "statusReason", SystemAccessDenial) != "endanger-life-safety" {
		t.Fatalf("denied task: %s", fhir.AppendJSON(nil, p.Task))
	}
	letter := Text(p.Writes[0].Resource)
	for _, part := range []string{"Basis:", "164.524(a)(3)(i)", "right to a review", "Ask in your app", "How to complain: Write to the Privacy Officer.",
		"Secretary of the U.S. Department of Health and Human Services", "180 days", "Privacy Officer, telephone +1 555 0100"} {
		if !strings.Contains(letter, part) {
			t.Errorf("the notice lacks %q:\n%s", part, letter)
		}
	}
	// Each missing part refuses the denial, with the configured defaults gone.
	f.Contact = Contact{}
	for _, tc := range []struct {
		p    DenyParams
		want string
	}{
		{DenyParams{Ground: "endanger-life-safety", Basis: "x", ContactName: "Privacy Officer", Complaint: "c", ReviewHowTo: "r"}, "telephone"},
		{DenyParams{Ground: "endanger-life-safety", Basis: "x", ContactPhone: "1", Complaint: "c", ReviewHowTo: "r"}, "name or title"},
		{DenyParams{Ground: "endanger-life-safety", ContactName: "n", ContactPhone: "1", Complaint: "c", ReviewHowTo: "r"}, "basis"},
		{DenyParams{Ground: "endanger-life-safety", Basis: "x", ContactName: "n", ContactPhone: "1", ReviewHowTo: "r"}, "complain"},
		{DenyParams{Ground: "endanger-life-safety", Basis: "x", ContactName: "n", ContactPhone: "1", Complaint: "c"}, "review"},
		{DenyParams{Ground: "clia", Basis: "x", ContactName: "n", ContactPhone: "1", Complaint: "c"}, "names its ground"},
		{DenyParams{Ground: "accurate-and-complete", Basis: "x", ContactName: "n", ContactPhone: "1", Complaint: "c"}, "names its ground"},
	} {
		_, err := f.Deny(task, doctor, tc.p, Dispute{})
		wantRule(t, err, 422, tc.want)
	}
	// An unreviewable ground needs no review instructions, and says so.
	p, err = f.Deny(task, doctor, DenyParams{Ground: "psychotherapy-notes", Basis: "notes kept apart", ContactName: "n", ContactPhone: "1", Complaint: "c"}, Dispute{})
	if err != nil || !strings.Contains(Text(p.Writes[0].Resource), "not subject to review") {
		t.Fatalf("unreviewable: %v", err)
	}
}

func TestReview(t *testing.T) {
	f := newFixture()
	task := f.file(t, accessTask(t, CodeAccessCopy, ""))
	p, _ := f.Deny(task, doctor, denyAll(), Dispute{})
	denied, notice := p.Task, p.Writes[0].Resource
	var prov *fhir.Object
	for _, w := range p.Writes {
		if w.Type == "Provenance" {
			prov = w.Resource
		}
	}
	_, err := f.RequestReview(denied, clerk, false)
	wantRule(t, err, 403, "requester")
	rp, err := f.RequestReview(denied, patient, false)
	if err != nil {
		t.Fatal(err)
	}
	valid(t, rp)
	review := rp.Task
	if refOf(review, "partOf") != "" || len(list(review, "partOf")) != 1 || codeIn(review, "code", SystemRequestType) != CodeDenialReview {
		t.Fatalf("review task: %s", fhir.AppendJSON(nil, review))
	}
	_, err = f.RequestReview(denied, patient, true)
	wantRule(t, err, 422, "already asked")
	who := Reviewer{Licensed: true, Participants: Participants(denied, notice, []*fhir.Object{prov})}
	if !contains(who.Participants, "Practitioner/doc") {
		t.Fatalf("the denier is a participant: %v", who.Participants)
	}
	_, err = f.DecideReview(review, denied, doctor, who, BSReversed, "fine")
	wantRule(t, err, 422, "the reviewer took part in the denial")
	reviewer := Actor{Role: RoleFulfiller, Ref: "Practitioner/rev"}
	_, err = f.DecideReview(review, denied, reviewer, Reviewer{Licensed: false, Participants: who.Participants}, BSReversed, "fine")
	wantRule(t, err, 403, "licensed")
	_, err = f.DecideReview(review, denied, Actor{Role: RoleSystem}, who, BSReversed, "fine")
	wantRule(t, err, 403, "Practitioner")
	_, err = f.DecideReview(review, denied, reviewer, who, "maybe", "fine")
	wantRule(t, err, 422, "upheld or reversed")
	dp, err := f.DecideReview(review, denied, reviewer, who, BSReversed, "the risk has passed")
	if err != nil {
		t.Fatal(err)
	}
	valid(t, dp)
	var reopened *fhir.Object
	for _, w := range dp.Writes {
		if w.Type == "Task" {
			reopened = w.Resource
		}
	}
	if step(reopened, KindAccess) != (Step{StatusInProgress, BSInReview}) || step(dp.Task, KindDenialReview) != (Step{StatusCompleted, BSReversed}) {
		t.Fatalf("reversal reopens the request: %s", fhir.AppendJSON(nil, reopened))
	}
	if _, err := f.Fulfil(reopened, clerk, FulfilParams{Delivered: []string{"DocumentReference/d1"}}); err != nil {
		t.Fatalf("the reopened request is fulfilled: %v", err)
	}
	// An unreviewable ground cannot be reviewed.
	p, _ = f.Deny(task, doctor, DenyParams{Ground: "privacy-act", Basis: "x"}, Dispute{})
	_, err = f.RequestReview(p.Task, patient, false)
	wantRule(t, err, 422, "not reviewable")
}

func TestPatientMayOnlyCancel(t *testing.T) {
	f := newFixture()
	task := f.file(t, accessTask(t, CodeAccessCopy, ""))
	moved := fhir.Clone(task).(*fhir.Object)
	f.setStep(moved, KindAccess, Step{StatusInProgress, BSInReview})
	_, err := f.Update(task, moved, patient, Dispute{})
	wantRule(t, err, 403, "may only cancel")
	// An unchanged echo with a new note is fine; the note gets its author.
	noted := fhir.Clone(task).(*fhir.Object)
	noted.Set("note", []any{obj("text", "please include the X-ray report")})
	p, err := f.Update(task, noted, patient, Dispute{})
	if err != nil {
		t.Fatal(err)
	}
	if refOf(objects(p.Task, "note")[0], "authorReference") != "Patient/p1" {
		t.Errorf("note author: %s", fhir.AppendJSON(nil, p.Task))
	}
	// Someone else's note is not theirs to change.
	edited := fhir.Clone(p.Task).(*fhir.Object)
	edited.Set("note", []any{obj("text", "changed")})
	_, err = f.Update(p.Task, edited, clerk, Dispute{})
	wantRule(t, err, 403, "only by its author")
	// Inputs are the requester's; outputs the records office's.
	reworded := fhir.Clone(task).(*fhir.Object)
	reworded.Set("input", []any{io(SystemAccessInput, InRequestedFormat, "", "valueCode", "text/html")})
	_, err = f.Update(task, reworded, clerk, Dispute{})
	wantRule(t, err, 403, "only the requester side writes Task.input")
	if _, err := f.Update(task, reworded, patient, Dispute{}); err != nil {
		t.Errorf("the patient changes what they asked for: %v", err)
	}
	selfServed := fhir.Clone(task).(*fhir.Object)
	selfServed.Set("output", []any{io(SystemAccessOutput, OutDelivered, "", "valueReference", ref("DocumentReference/d1"))})
	_, err = f.Update(task, selfServed, patient, Dispute{})
	wantRule(t, err, 403, "a requester may only cancel")
	// Server fields: a change is refused, an echo is fine.
	changed := fhir.Clone(task).(*fhir.Object)
	changed.Set("authoredOn", "2026-01-01T00:00:00Z")
	_, err = f.Update(task, changed, clerk, Dispute{})
	wantRule(t, err, 422, "authoredOn is set by the server")
	// Cancel by PUT runs the same rule as $cancel.
	cancelled := fhir.Clone(task).(*fhir.Object)
	cancelled.Set("status", "cancelled")
	cancelled.Delete("businessStatus")
	p, err = f.Update(task, cancelled, patient, Dispute{})
	if err != nil || step(p.Task, KindAccess) != (Step{StatusCancelled, BSCancelled}) {
		t.Fatalf("cancel by PUT: %v", err)
	}
	valid(t, p)
	_, err = f.Cancel(p.Task, patient)
	wantRule(t, err, 422, "only an open request")
	_, err = f.Cancel(task, clerk)
	wantRule(t, err, 403, "by its requester")
	// The fulfiller's PUT moves it through its states, but not backwards and not to a made-up state.
	p, err = f.Update(task, moved, clerk, Dispute{})
	if err != nil || step(p.Task, KindAccess).Business != BSInReview {
		t.Fatalf("start review by PUT: %v", err)
	}
	back := fhir.Clone(p.Task).(*fhir.Object)
	f.setStep(back, KindAccess, Step{StatusReady, BSQueued})
	_, err = f.Update(p.Task, back, clerk, Dispute{})
	wantRule(t, err, 422, "cannot move")
	// A denial by PUT composes its notice like $deny: the basis is statusReason.text.
	denied := fhir.Clone(p.Task).(*fhir.Object)
	f.setStep(denied, KindAccess, Step{StatusCompleted, BSDenied})
	denied.Set("statusReason", concept(SystemAccessDenial, "endanger-life-safety", ""))
	_, err = f.Update(p.Task, denied, doctor, Dispute{})
	wantRule(t, err, 422, "basis")
	denied.Object("statusReason").Set("text", "risk to life")
	dp, err := f.Update(p.Task, denied, doctor, Dispute{})
	if err != nil || firstOutput(dp.Task, SystemAccessOutput, OutDenialNotice) == nil {
		t.Fatalf("deny by PUT: %v", err)
	}
	valid(t, dp)
}

// TestFulfilInTheFormatAsked: 164.524(c)(2)(i) — the form and format asked for where readily producible; else one
// agreed with the patient, which the records office states and the patient's letter repeats.
func TestFulfilInTheFormatAsked(t *testing.T) {
	f := newFixture()
	pdf := `,"input":[{"type":{"coding":[{"system":"` + SystemAccessInput + `","code":"requested-format"}]},"valueCode":"application/pdf"}]`
	task := f.file(t, accessTask(t, CodeAccessCopy, pdf))
	text := FulfilParams{Delivered: []string{"DocumentReference/d1"}, Formats: map[string][]string{"DocumentReference/d1": {"application/fhir+json", "text/plain"}}}
	_, err := f.Fulfil(task, clerk, text)
	wantRule(t, err, 422, "asked for application/pdf and nothing delivered is in that format")
	both := text
	both.Delivered = []string{"DocumentReference/d1", "DocumentReference/d2"}
	both.Formats = map[string][]string{"DocumentReference/d1": {"text/plain"}, "DocumentReference/d2": {"application/PDF; charset=binary"}}
	if _, err := f.Fulfil(task, clerk, both); err != nil {
		t.Errorf("a PDF among the delivered: %v", err)
	}
	agreed := text
	agreed.FormatAgreed = "plain text, agreed with the patient by phone on 2026-03-04"
	p, err := f.Fulfil(task, clerk, agreed)
	if err != nil {
		t.Fatal(err)
	}
	valid(t, p)
	if o := firstOutput(p.Task, SystemAccessOutput, OutFormatAgreed); o == nil || valueString(o) != agreed.FormatAgreed {
		t.Errorf("the agreed format is not recorded: %s", fhir.AppendJSON(nil, p.Task))
	}
	if letter := Text(p.Writes[0].Resource); !strings.Contains(letter, "application/pdf") || !strings.Contains(letter, "agreed with the patient by phone") {
		t.Errorf("the patient's letter does not say what was agreed: %s", letter)
	}
	// FHIR JSON asked, FHIR resources delivered; paper asked, anything recorded.
	fhirJSON := f.file(t, accessTask(t, CodeAccessCopy, strings.Replace(pdf, "application/pdf", "application/json", 1)))
	if _, err := f.Fulfil(fhirJSON, clerk, text); err != nil {
		t.Errorf("FHIR JSON asked and given: %v", err)
	}
	paper := f.file(t, accessTask(t, CodeAccessCopy, strings.Replace(pdf, "application/pdf", "paper", 1)))
	if _, err := f.Fulfil(paper, clerk, FulfilParams{Delivered: []string{"DocumentReference/d1"}}); err != nil {
		t.Errorf("a paper copy recorded: %v", err)
	}
}

func amendmentRequest(t *testing.T) *fhir.Object {
	return parse(t, `{"resourceType":"Communication","status":"completed",
		"category":[{"coding":[{"system":"`+SystemCorrectionComm+`","code":"medRecCxReq"}]}],
		"subject":{"reference":"Patient/p1"},
		"payload":[{"contentString":"My allergy list says penicillin; I am allergic to sulfa, not penicillin."},{"contentReference":{"reference":"DocumentReference/note1"}}]}`)
}

func TestAmendmentWorkflowRules(t *testing.T) {
	f := newFixture()
	p, err := f.CorrectionRequest(amendmentRequest(t), patient)
	if err != nil {
		t.Fatal(err)
	}
	valid(t, p)
	task, comm := p.Task, p.Writes[0].Resource
	if dueOf(task) != "2026-05-01" || task.Object("restriction") != nil || refOf(task, "focus") != "DocumentReference/note1" {
		t.Fatalf("amendment task (60 days, requestedPeriod, focus): %s", fhir.AppendJSON(nil, task))
	}
	if refOf(objects(comm, "about")[0], "") != "" || objects(comm, "about")[0].String("reference") != "Task/"+task.String("id") || refOf(comm, "sender") != "Patient/p1" {
		t.Fatalf("the Communication points at its Task: %s", fhir.AppendJSON(nil, comm))
	}
	// Statuses from the IG's prose but not its CodeSystem are refused.
	bad := fhir.Clone(task).(*fhir.Object)
	f.setStep(bad, KindAmendment, Step{StatusCompleted, legacyInformRebutt})
	_, err = f.Update(task, bad, clerk, Dispute{})
	wantRule(t, err, 422, "never used")
	// Disagreement before any denial.
	disagree := parse(t, `{"resourceType":"Communication","status":"completed",
		"category":[{"coding":[{"system":"`+SystemCorrectionComm+`","code":"medRecCxDenialDisagree"}]}],
		"subject":{"reference":"Patient/p1"},"payload":[{"contentString":"I disagree: the allergy is to sulfa."}]}`)
	_, err = f.Disagree(disagree, task, patient, Dispute{}, false)
	wantRule(t, err, 422, "needs a prior denial")
	// Deny with an amendment ground; the notice carries the disagreement rights and the future-disclosure option.
	dp, err := f.Deny(task, doctor, DenyParams{Ground: "accurate-and-complete", Basis: "the allergy was confirmed by testing"},
		Dispute{Targets: []string{"DocumentReference/note1"}, RequestText: Text(comm)})
	if err != nil {
		t.Fatal(err)
	}
	valid(t, dp)
	letter := Text(dp.Writes[0].Resource)
	for _, part := range []string{"statement disagreeing", "future disclosures", "164.526(a)(2)(iv)", "telephone"} {
		if !strings.Contains(letter, part) {
			t.Errorf("amendment denial notice lacks %q:\n%s", part, letter)
		}
	}
	var docs []*fhir.Object
	for _, w := range dp.Writes {
		if w.Type == "DocumentReference" {
			docs = append(docs, w.Resource)
		}
	}
	if len(docs) != 2 || objects(docs[0], "relatesTo")[0].String("code") != "appends" || refOf(objects(docs[0], "relatesTo")[0], "target") != "DocumentReference/note1" {
		t.Fatalf("request and denial appended to the disputed record: %d", len(docs))
	}
	denied := dp.Task
	// Too long a statement; then a good one; a second one.
	long := fhir.Clone(disagree).(*fhir.Object)
	long.Set("payload", []any{obj("contentString", strings.Repeat("word ", 21))})
	_, err = f.Disagree(long, denied, patient, Dispute{}, false)
	wantRule(t, err, 422, "limited to 20 words")
	gp, err := f.Disagree(disagree, denied, patient, Dispute{Targets: []string{"DocumentReference/note1"}}, false)
	if err != nil {
		t.Fatal(err)
	}
	valid(t, gp)
	if refOf(gp.Task, "reasonReference") != "Task/"+denied.String("id") || step(gp.Task, KindDisagreement).Business != BSDisagreement {
		t.Fatalf("disagreement task: %s", fhir.AppendJSON(nil, gp.Task))
	}
	_, err = f.Disagree(disagree, denied, patient, Dispute{}, true)
	wantRule(t, err, 422, "already filed")
	rb, err := f.Rebut(gp.Task, denied, clerk, "The allergy was confirmed by a skin test in 2019.", Dispute{Targets: []string{"DocumentReference/note1"}})
	if err != nil {
		t.Fatal(err)
	}
	valid(t, rb)
	_, err = f.Rebut(rb.Task, denied, clerk, "again", Dispute{})
	wantRule(t, err, 422, "already answered")
	_, err = f.Rebut(gp.Task, denied, patient, "x", Dispute{})
	wantRule(t, err, 403, "records office")
}

func TestAcceptAmendment(t *testing.T) {
	f := newFixture()
	p, _ := f.CorrectionRequest(amendmentRequest(t), patient)
	task := p.Task
	original := parse(t, `{"resourceType":"DocumentReference","id":"note1","status":"current","subject":{"reference":"Patient/p1"},
		"content":[{"attachment":{"contentType":"text/plain","data":"QWxsZXJneTogcGVuaWNpbGxpbg=="}}]}`)
	amended := parse(t, `{"resourceType":"DocumentReference","status":"current",
		"content":[{"attachment":{"contentType":"text/plain","data":"QWxsZXJneTogc3VsZmE="}}]}`)
	_, err := f.Accept(task, clerk, AcceptParams{Amended: amended, Original: original, Mode: "overwrites"})
	wantRule(t, err, 422, "replaces")
	ap, err := f.Accept(task, clerk, AcceptParams{Amended: amended, Original: original, Mode: "replaces", Notify: []string{"Practitioner/gp", "Organization/lab"}})
	if err != nil {
		t.Fatal(err)
	}
	valid(t, ap)
	var newDoc, superseded, prov *fhir.Object
	notified := 0
	for _, w := range ap.Writes {
		switch {
		case w.Type == "DocumentReference" && w.Create:
			newDoc = w.Resource
		case w.Type == "DocumentReference":
			superseded = w.Resource
		case w.Type == "Provenance":
			prov = w.Resource
		case w.Type == "Communication" && codeIn(objects(w.Resource, "category")[0], "", "") == "" && strings.Contains(string(fhir.AppendJSON(nil, w.Resource)), NoticeAmendmentToPeer):
			notified++
		}
	}
	if newDoc == nil || newDoc.String("docStatus") != "amended" || objects(newDoc, "relatesTo")[0].String("code") != "replaces" {
		t.Fatalf("amended document: %v", newDoc)
	}
	if superseded == nil || superseded.String("status") != "superseded" || prov == nil || notified != 2 {
		t.Fatalf("superseded %v, provenance %v, notified %d", superseded, prov, notified)
	}
	if step(ap.Task, KindAmendment) != (Step{StatusCompleted, BSAmended}) {
		t.Fatalf("task: %s", fhir.AppendJSON(nil, ap.Task))
	}
	// Appends leaves the original current.
	ap, _ = f.Accept(task, clerk, AcceptParams{Amended: amended, Original: original, Mode: "appends"})
	for _, w := range ap.Writes {
		if w.Type == "DocumentReference" && !w.Create {
			t.Errorf("appends changed the original")
		}
	}
	if _, err := f.Accept(task, patient, AcceptParams{Amended: amended, Original: original, Mode: "appends"}); err == nil {
		t.Error("a patient accepted their own amendment")
	} else {
		wantRule(t, err, http.StatusForbidden, "records office")
	}
}

func TestFeeRules(t *testing.T) {
	f := newFixture()
	api := `,"input":[{"type":{"coding":[{"system":"` + SystemAccessInput + `","code":"delivery"}]},"valueCode":"api"}]`
	task := f.file(t, accessTask(t, CodeAccessCopy, api))
	_, err := f.FeeEstimate(task, clerk, FeeParams{Amount: Money{Value: 5, Set: true}, Basis: "flat-fee"})
	wantRule(t, err, 422, "free")
	task = f.file(t, accessTask(t, CodeAccessCopy, ""))
	_, err = f.FeeEstimate(task, clerk, FeeParams{Amount: Money{Value: 7, Set: true}, Basis: "flat-fee"})
	wantRule(t, err, 422, "at most $6.50")
	_, err = f.FeeEstimate(task, clerk, FeeParams{Amount: Money{Value: 20, Set: true}, Basis: "search-and-retrieval"})
	wantRule(t, err, 422, "never search or retrieval")
	_, err = f.FeeEstimate(task, clerk, FeeParams{Amount: Money{Value: 20, Set: true}, Basis: "actual-cost", Labor: Money{Value: 10, Set: true}, Postage: Money{Value: 5, Set: true}})
	wantRule(t, err, 422, "do not add up")
	p, err := f.FeeEstimate(task, clerk, FeeParams{Amount: Money{Value: 6.5, Set: true}, Basis: "flat-fee"})
	if err != nil {
		t.Fatal(err)
	}
	valid(t, p)
	if step(p.Task, KindAccess).Business != BSFeeSent {
		t.Fatal("fee-estimate-sent")
	}
}

func TestDefinitionsAreValid(t *testing.T) {
	var defs []*fhir.Object
	for _, o := range Operations {
		defs = append(defs, o.OperationDefinition())
	}
	defs = append(defs, CodeSystems()...)
	for _, d := range defs {
		raw := fhir.AppendJSON(nil, d)
		if _, err := fhir.ParseResource(raw, ""); err != nil {
			t.Errorf("%s/%s: %v\n%s", d.String("resourceType"), d.String("id"), err, raw)
		}
	}
}
