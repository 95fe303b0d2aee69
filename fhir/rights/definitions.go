package rights

import (
	"encoding/json"
	"strconv"

	"github.com/carta-fhir/carta/fhir"
)

// Param is an input parameter of an operation.
type Param struct {
	Name, Type, Doc string
	Min             int
	Max             string // "1" or "*"
}

// Operation is one of the rights operations, as its OperationDefinition declares it.
type Operation struct {
	Code, Resource, Title, Doc string
	Instance, TypeLevel        bool
	Get                        bool // callable with GET (no side effects)
	URL                        string
	In                         []Param
	Out                        string // the type returned ("Task", "Bundle", "Parameters")
}

// ID is the OperationDefinition's id.
func (o Operation) ID() string { return o.Resource + "-" + o.Code }

// Canonical is the OperationDefinition's canonical URL.
func (o Operation) Canonical() string {
	if o.URL != "" {
		return o.URL
	}
	return base + "/OperationDefinition/" + o.ID()
}

// ParamNames are the names of the operation's input parameters.
func (o Operation) ParamNames() []string {
	out := make([]string, len(o.In))
	for i, p := range o.In {
		out[i] = p.Name
	}
	return out
}

// Operations are the rights operations (rights.md §6).
var Operations = []Operation{
	{Code: "cancel", Resource: "Task", Instance: true, Out: "Task", Title: "Cancel a request",
		Doc: "The requester (patient or representative) cancels an open request: cancelled / requester-cancelled."},
	{Code: "extend", Resource: "Task", Instance: true, Out: "Task", Title: "Extend a request once",
		Doc: "The records office extends the due date once, on or before it, by at most the extension the rules in force allow (30 days under HIPAA), with a written reason; the patient is sent the notice (45 CFR 164.524(b)(2)(ii), 164.526(b)(2)(ii)).",
		In:  []Param{{"reason", "string", "The reason for the delay, sent to the patient", 1, "1"}, {"due", "date", "The new due date", 1, "1"}}},
	{Code: "fee-estimate", Resource: "Task", Instance: true, Out: "Task", Title: "Give a fee estimate",
		Doc: "A cost-based fee told in advance (45 CFR 164.524(c)(4)): copying labour, supplies, postage; never search or retrieval; a flat fee of at most $6.50 for electronic copies; free through the API or portal.",
		In: []Param{{"amount", "Money", "The estimated total", 1, "1"}, {"basis", "code", "actual-cost | average-cost | flat-fee", 1, "1"},
			{"labor", "Money", "Copying labour", 0, "1"}, {"supplies", "Money", "Supplies (paper, media)", 0, "1"}, {"postage", "Money", "Postage", 0, "1"}}},
	{Code: "fulfil", Resource: "Task", Instance: true, Out: "Task", Title: "Fulfil an access request",
		Doc: "Completes the request with what was delivered; a copy directed to a third party also goes to that recipient, with any amendment dispute documents of the records (45 CFR 164.526(d)(5)).",
		In: []Param{{"delivered", "Reference", "What was delivered: DocumentReferences, a Bundle, an export", 1, "*"},
			{"format-agreed", "string", "When nothing delivered is in the format asked for: the form and format agreed with the patient instead (45 CFR 164.524(c)(2)(i))", 0, "1"}}},
	{Code: "redirect", Resource: "Task", Instance: true, Out: "Task", Title: "Records not held here",
		Doc: "Completes the request saying where the records are kept (45 CFR 164.524(d)(3)).",
		In:  []Param{{"where", "string", "Who keeps the records and how to reach them", 1, "1"}}},
	{Code: "deny", Resource: "Task", Instance: true, Out: "Task", Title: "Deny a request",
		Doc: "Completes the request with a coded ground and a notice the server composes from these parts (defaults from configuration); refused when a part the rule requires is missing (45 CFR 164.524(d)(2), 164.526(d)(1)).",
		In: []Param{{"ground", "code", "A code of access-denial-ground or amendment-denial-ground", 1, "1"}, {"basis", "string", "The basis in plain language", 1, "1"},
			{"review-rights", "string", "How to ask for a review (reviewable access grounds)", 0, "1"}, {"disagree-how-to", "string", "How to file a statement of disagreement (amendments)", 0, "1"},
			{"contact-name", "string", "Name or title of the contact person or office", 0, "1"}, {"contact-phone", "string", "Telephone of the contact", 0, "1"},
			{"complaint", "string", "How to complain to the provider", 0, "1"}, {"delivered", "Reference", "What was given (a partial denial of access)", 0, "*"}}},
	{Code: "request-review", Resource: "Task", Instance: true, Out: "Task", Title: "Ask for a review of a denial",
		Doc: "The requester asks for the review of a denial on a reviewable ground (45 CFR 164.524(a)(3)-(4)); the answer is the new denial-review Task (201)."},
	{Code: "decide-review", Resource: "Task", Instance: true, Out: "Task", Title: "Decide a review",
		Doc: "A licensed health care professional who took no part in the denial decides; the decision binds: reversed reopens the request for fulfilment; the patient is told (45 CFR 164.524(a)(4), (d)(4)).",
		In:  []Param{{"outcome", "code", "upheld | reversed", 1, "1"}, {"rationale", "string", "The reasons, sent to the patient", 1, "1"}}},
	{Code: "accept", Resource: "Task", Instance: true, Out: "Task", Title: "Apply an accepted amendment",
		Doc: "Writes the amended DocumentReference (docStatus amended) that replaces the original (then superseded) or appends to it, a Provenance, the notice to the patient, and a Communication to each person named (45 CFR 164.526(c)).",
		In: []Param{{"amended", "DocumentReference", "The amended document's content", 1, "1"}, {"original", "Reference", "The DocumentReference amended (default: the request's focus)", 0, "1"},
			{"mode", "code", "replaces | appends", 1, "1"}, {"notify", "Reference", "People the patient named to be told", 0, "*"}, {"explanation", "string", "Added to the patient's notice", 0, "1"}}},
	{Code: "rebut", Resource: "Task", Instance: true, Out: "Task", Title: "Rebut a statement of disagreement",
		Doc: "The provider's rebuttal of a statement of disagreement: sent to the patient and kept with the disputed records (45 CFR 164.526(d)(3)-(4)).",
		In:  []Param{{"text", "string", "The rebuttal", 1, "1"}}},
	{Code: "deadlines", Resource: "Task", TypeLevel: true, Get: true, Out: "Parameters", Title: "Deadline rules in force",
		Doc: "The jurisdiction profiles in force and their clocks (days, calendar or business, extensions): the earliest due date wins (45 CFR 160.203(b))."},
	{Code: "correctionrequest", Resource: "Communication", TypeLevel: true, Out: "Bundle", Title: "Request a correction",
		URL: IGBase + "/OperationDefinition/correction-request",
		Doc: "Patient Request for Corrections IG: a collection Bundle with one correction Communication. A new request creates its Task; a follow-up joins its thread; a statement of disagreement (medRecCxDenialDisagree) is logged against the denied request. Also accepted as $correction-request.",
		In:  []Param{{"CorrectionRequest", "Bundle", "The patient-correction-bundle", 1, "1"}}},
	{Code: "everything", Resource: "Patient", Instance: true, Get: true, Out: "Bundle", Title: "Everything about a patient",
		URL: "http://hl7.org/fhir/OperationDefinition/Patient-everything",
		Doc: "The patient's compartment (restricted records never for a patient's token) with the shared resources it refers to.",
		In:  []Param{{"_since", "instant", "Only resources changed since", 0, "1"}, {"_type", "code", "Resource types to include", 0, "*"}, {"_count", "integer", "Page size", 0, "1"}}},
}

// OperationByCode finds an operation of a resource type.
func OperationByCode(resource, code string) (Operation, bool) {
	for _, o := range Operations {
		if o.Resource == resource && o.Code == code {
			return o, true
		}
	}
	return Operation{}, false
}

func boolean(b bool) bool { return b }

// OperationDefinition is the operation's definition as a FHIR resource.
func (o Operation) OperationDefinition() *fhir.Object {
	var ps []any
	for _, p := range o.In {
		ps = append(ps, obj("name", p.Name, "use", "in", "min", json.Number(strconv.Itoa(p.Min)), "max", p.Max, "documentation", p.Doc, "type", p.Type))
	}
	ps = append(ps, obj("name", "return", "use", "out", "min", json.Number("1"), "max", "1", "type", o.Out))
	return obj("resourceType", "OperationDefinition", "id", o.ID(), "url", o.Canonical(), "name", pascal(o.Resource+"-"+o.Code), "title", o.Title,
		"status", "active", "kind", "operation", "description", o.Doc, "affectsState", boolean(!o.Get), "code", o.Code,
		"resource", arr(o.Resource), "system", false, "type", boolean(o.TypeLevel), "instance", boolean(o.Instance), "parameter", ps)
}

func pascal(s string) string {
	out := make([]byte, 0, len(s))
	up := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '-' {
			up = true
			continue
		}
		if up && c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		up = false
		out = append(out, c)
	}
	return string(out)
}

// concept of a CodeSystem.
type csConcept struct{ code, display, definition string }

func codeSystem(id, url, title, desc string, concepts []csConcept, props ...any) *fhir.Object {
	var cs []any
	for _, c := range concepts {
		cs = append(cs, obj("code", c.code, "display", c.display, "definition", c.definition))
	}
	return obj("resourceType", "CodeSystem", "id", id, "url", url, "name", pascal(id), "title", title, "status", "active",
		"description", desc, "caseSensitive", true, "content", "complete", "concept", cs)
}

// CodeSystems are Carta's code systems of the rights workflow.
func CodeSystems() []*fhir.Object {
	grounds := func(gs []Ground) []csConcept {
		var out []csConcept
		for _, g := range gs {
			rv := "not reviewable"
			if g.Reviewable {
				rv = "reviewable by a licensed health care professional who took no part in the denial"
			}
			out = append(out, csConcept{g.Code, g.Display, g.Rule + "; " + rv})
		}
		return out
	}
	return []*fhir.Object{
		codeSystem("request-type", SystemRequestType, "Patient-rights request types", "Task.code of the requests Carta governs (besides the corrections IG's).", []csConcept{
			{CodeAccessCopy, "Copy of records", "A copy of PHI in the designated record set (45 CFR 164.524)"},
			{CodeAccessInspect, "Inspection of records", "Inspecting PHI in the designated record set"},
			{CodeAccessDirected, "Copy sent to a third party", "A copy sent to a person the patient designates in a signed writing (164.524(c)(3)(ii))"},
			{CodeDenialReview, "Review of a denial", "Review of a reviewable denial of access (164.524(a)(4))"},
			{CodeAccounting, "Accounting of disclosures", "An accounting of disclosures (164.528)"},
		}),
		codeSystem("access-status", SystemAccessStatus, "Access request business statuses", "Task.businessStatus of access, accounting and review requests.", []csConcept{
			{BSQueued, "Queued", "Received, not yet reviewed"}, {BSInReview, "In review", "Being worked on"},
			{BSWaiting, "Waiting for information", "Waiting on the requester"}, {BSFeeSent, "Fee estimate sent", "A fee estimate was given in advance"},
			{BSFulfilled, "Fulfilled", "Access given"}, {BSPartial, "Partially fulfilled", "Part given, part denied"},
			{BSDenied, "Denied", "Denied with a ground and a notice"}, {BSRedirected, "Not held here", "The patient was told where the records are"},
			{BSCancelled, "Cancelled by the requester", "Cancelled by the patient or representative"},
			{BSUpheld, "Denial upheld", "Review: the denial stands"}, {BSReversed, "Denial reversed", "Review: access is to be given"},
		}),
		codeSystem("access-input", SystemAccessInput, "Access request inputs", "Task.input types of an access request.", []csConcept{
			{InRequestedRecords, "Records requested", "What is asked for (text, date range, categories or references)"},
			{InRequestedFormat, "Requested format", "A MIME type, or paper"}, {InDelivery, "Delivery", "api, portal, email, mail, portable-media, in-person"},
			{InRecipient, "Recipient", "The third party of a directed copy"}, {InDestination, "Destination", "Where the directed copy goes"},
			{InSignedDirective, "Signed directive", "The patient's signed written direction (Attachment)"},
		}),
		codeSystem("access-output", SystemAccessOutput, "Access request outputs", "Task.output types the records office writes.", []csConcept{
			{OutFeeEstimate, "Fee estimate", "Money"}, {OutFeeBasis, "Fee basis", "actual-cost, average-cost or flat-fee"},
			{OutDelivered, "Delivered", "What was given"}, {OutFormatAgreed, "Format agreed", "The form and format agreed with the patient when the one asked for is not readily producible (45 CFR 164.524(c)(2))"},
			{OutRedirectTo, "Ask here instead", "Where the records are kept"},
			{OutDenialNotice, "Denial notice", "The Communication sent"}, {OutReviewDecision, "Review decision", "The Communication sent"},
		}),
		codeSystem("access-denial-ground", SystemAccessDenial, "Grounds for denying access", "45 CFR 164.524(a); the CLIA ground, removed in 2014, is not one.", grounds(AccessGrounds)),
		codeSystem("amendment-denial-ground", SystemAmendmentDenial, "Grounds for denying an amendment", "45 CFR 164.526(a)(2).", grounds(AmendmentGrounds)),
		codeSystem("notice-type", SystemNoticeType, "Letters of the rights workflow", "Communication.topic (and category) of the letters the server sends.", []csConcept{
			{NoticeExtension, "Extension notice", ""}, {NoticeFeeEstimate, "Fee estimate", ""}, {NoticeFulfilled, "Fulfilment notice", ""},
			{NoticeRedirect, "Where to send the request", ""}, {NoticeDenial, "Denial notice", ""}, {NoticeReviewDecision, "Review decision", ""},
			{NoticeAmended, "Amendment notice", ""}, {NoticeAmendmentToPeer, "Amendment notification", "To a person the patient named"},
			{NoticeRebuttal, "Rebuttal", ""}, {"directed-copy", "Copy sent at the patient's direction", ""},
		}),
		codeSystem("dispute-role", SystemDisputeRole, "Amendment dispute documents", "meta.tag of the DocumentReferences kept with a disputed record (164.526(d)(4)).", []csConcept{
			{DisputeRequest, "Request for amendment", ""}, {DisputeDenial, "Denial", ""}, {DisputeDisagreement, "Statement of disagreement", ""}, {DisputeRebuttal, "Rebuttal", ""},
		}),
		codeSystem("security-label", SystemSecurityLabel, "Carta security labels", "Labels that keep a record from patient tokens (besides v3-ActCode PSYTHPN).", []csConcept{
			{"litigation-compilation", "Compiled for a legal proceeding", "45 CFR 164.524(a)(1)(ii)"},
		}),
		codeSystem("qualification", SystemQualification, "Carta qualifications", "Practitioner.qualification codes.", []csConcept{
			{QualificationLicensed, "Licensed health care professional", "May decide reviews of denials (164.524(a)(4))"},
		}),
	}
}
