package rights

import (
	"fmt"
	"strings"

	"github.com/carta-fhir/carta/fhir"
)

// RequestReview asks for the review of a reviewable access denial (164.524(a)(4)): a denial-review Task, partOf
// the denied request. hasReview says whether one was already asked.
func (r *Rules) RequestReview(denied *fhir.Object, a Actor, hasReview bool) (*Plan, error) {
	k := kindOf(denied)
	if !a.patientSide() {
		return nil, forbidden("a review is asked for by the requester (the patient or their representative)")
	}
	if err := ensureParty(denied, a); err != nil {
		return nil, err
	}
	if k != KindAccess {
		return nil, violation("Task.code", "a review is for a denied access request, not a %s (an amendment denial is answered with a statement of disagreement)", k)
	}
	s := step(denied, k)
	if s.Business != BSDenied && s.Business != BSPartial {
		return nil, violation("Task.businessStatus", "only a denied request can be reviewed; this one is %s", s.Business)
	}
	code := codeIn(denied, "statusReason", SystemAccessDenial)
	g, ok := findGround(AccessGrounds, code)
	if !ok || !g.Reviewable {
		return nil, violation("Task.statusReason", "the ground %q is not reviewable (45 CFR 164.524(a)(2)); only the grounds of 164.524(a)(3) are", code)
	}
	if hasReview {
		return nil, violation("Task", "a review of this denial was already asked for")
	}
	self := a.Ref
	if self == "" {
		self = "Patient/" + a.Patient
	}
	now := r.instant(r.Now())
	t := obj(
		"resourceType", "Task", "id", r.NewID(),
		"meta", obj("profile", arr(ProfileDenialReview)),
		"partOf", arr(ref("Task/"+denied.String("id"))),
		"status", StatusReady,
		"businessStatus", concept(SystemAccessStatus, BSQueued, ""),
		"intent", "order",
		"code", concept(SystemRequestType, CodeDenialReview, "Review of a denial of access"),
		"focus", ref("Task/"+denied.String("id")),
		"for", ref(refOf(denied, "for")),
		"authoredOn", now,
		"lastModified", now,
		"requester", ref(self),
		"owner", refDisplay(r.Owner, r.OwnerDisplay),
		"reasonCode", obj("coding", arr(coding(SystemAccessDenial, g.Code, g.Display)), "text", "Review of the denial ("+g.Rule+")"),
	)
	r.setDeadline(t, KindDenialReview)
	return &Plan{Task: t, Message: "review asked for; a licensed health care professional who took no part in the denial will decide"}, nil
}

// Reviewer is what the caller found about who decides a review: whether their Practitioner record marks a
// licensed health care professional, and who took part in the denial (its notice's sender, the denied Task's
// changes, its Provenance agents).
type Reviewer struct {
	Licensed     bool
	Participants []string
}

// DecideReview records the reviewer's binding decision: upheld, or reversed, which reopens the original request
// for fulfilment; the patient gets the decision (164.524(a)(4), (d)(4)).
func (r *Rules) DecideReview(review, denied *fhir.Object, a Actor, who Reviewer, outcome, rationale string) (*Plan, error) {
	if kindOf(review) != KindDenialReview {
		return nil, violation("Task.code", "$decide-review is for a denial-review Task")
	}
	if a.Role != RoleFulfiller || !strings.HasPrefix(a.Ref, "Practitioner/") {
		return nil, forbidden("a review is decided by a licensed health care professional signed in as a Practitioner")
	}
	if !who.Licensed {
		return nil, forbidden("%s is not recorded as a licensed health care professional (Practitioner.qualification); only one may decide a review (45 CFR 164.524(a)(4))", a.Ref)
	}
	if contains(who.Participants, a.Ref) {
		return nil, violation("Task", "the reviewer took part in the denial: %s may not review it (45 CFR 164.524(a)(4))", a.Ref)
	}
	if !open(step(review, KindDenialReview)) {
		return nil, violation("Task.status", "this review was already decided")
	}
	if outcome != BSUpheld && outcome != BSReversed {
		return nil, violation("outcome", "the outcome is upheld or reversed, got %q", outcome)
	}
	if strings.TrimSpace(rationale) == "" {
		return nil, violation("rationale", "the decision gives its reasons, which the patient receives")
	}
	rv := fhir.Clone(review).(*fhir.Object)
	rv.Set("owner", ref(a.Ref))
	r.setStep(rv, KindDenialReview, Step{StatusCompleted, outcome})
	r.start(rv)
	r.finish(rv)
	verdict := "The reviewer upheld the denial: it stands."
	if outcome == BSReversed {
		verdict = "The reviewer reversed the denial: we will now provide the access you asked for."
	}
	text := fmt.Sprintf("A licensed health care professional who did not take part in the denial has reviewed the denial of %s. %s\n\nReasons: %s\n\nThis decision binds us (45 CFR 164.524(d)(4)).",
		r.requestName(denied), verdict, strings.TrimSpace(rationale))
	n := r.notice(rv, NoticeReviewDecision, "Decision on the review of your denial", text, toPatient(denied))
	setIO(rv, "output", SystemAccessOutput, OutReviewDecision, io(SystemAccessOutput, OutReviewDecision, "Review decision", "valueReference", ref("Communication/"+n.String("id"))))
	pl := &Plan{Task: rv, Message: fmt.Sprintf("review decided: %s; the patient was sent Communication/%s", outcome, n.String("id"))}
	pl.add("Communication", n, true)
	orig := fhir.Clone(denied).(*fhir.Object)
	addIO(orig, "output", io(SystemAccessOutput, OutReviewDecision, "Review decision", "valueReference", ref("Communication/"+n.String("id"))))
	if outcome == BSReversed {
		r.setStep(orig, KindAccess, Step{StatusInProgress, BSInReview})
		orig.Delete("statusReason") // the denial's ground no longer explains the status; the notice and decision stay in output
		if p := orig.Object("executionPeriod"); p != nil {
			p.Delete("end")
		}
	}
	r.touch(orig)
	pl.add("Task", orig, false)
	return pl, nil
}

// Participants lists who took part in a denial: the Practitioners named as its decider on the notice, as the
// owner of the denied Task, and as agents of the Provenance recorded for the denied Task.
func Participants(denied, notice *fhir.Object, provenances []*fhir.Object) []string {
	var out []string
	add := func(s string) {
		if strings.HasPrefix(s, "Practitioner/") && !contains(out, s) {
			out = append(out, s)
		}
	}
	add(refOf(denied, "owner"))
	if notice != nil {
		add(refOf(notice, "sender"))
		if e := extension(notice, ExtDecidedBy); e != nil {
			add(refOf(e, "valueReference"))
		}
	}
	for _, p := range provenances {
		for _, ag := range objects(p, "agent") {
			add(refOf(ag, "who"))
			add(refOf(ag, "onBehalfOf"))
		}
	}
	return out
}

// ExtDecidedBy names, on a notice, the person who made the decision it announces.
const ExtDecidedBy = base + "/StructureDefinition/decided-by"
