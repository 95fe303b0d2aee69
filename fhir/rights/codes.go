// Package rights holds the rules of the patient's rights of access (45 CFR 164.524) and amendment (164.526) as
// pure functions: a request Task, an action, the actor, a clock and the jurisdiction profiles in force go in; the
// next Task with the resources the action creates, or the rule it breaks, come out. Nothing here does I/O: the
// HTTP layer loads what a rule needs, calls it, and writes the plan it returns in one transaction.
package rights

import "github.com/carta-fhir/carta/fhir"

// Carta's canonical URLs (one base, fhir.CanonicalBase).
const (
	base = fhir.CanonicalBase

	SystemRequestType       = base + "/CodeSystem/request-type"
	SystemAccessStatus      = base + "/CodeSystem/access-status"
	SystemAccessInput       = base + "/CodeSystem/access-input"
	SystemAccessOutput      = base + "/CodeSystem/access-output"
	SystemAccessDenial      = base + "/CodeSystem/access-denial-ground"
	SystemAmendmentDenial   = base + "/CodeSystem/amendment-denial-ground"
	SystemDeliveryMethod    = base + "/CodeSystem/delivery-method"
	SystemNoticeType        = base + "/CodeSystem/notice-type"
	SystemDisputeRole       = base + "/CodeSystem/dispute-role"
	SystemSecurityLabel     = base + "/CodeSystem/security-label"
	ExtDeadline             = base + "/StructureDefinition/deadline"
	ExtDiscloseDispute      = base + "/StructureDefinition/disclose-with-record"
	ProfileAccessRequest    = base + "/StructureDefinition/access-request"
	ProfileDenialReview     = base + "/StructureDefinition/denial-review"
	ProfileAccountingReq    = base + "/StructureDefinition/accounting-request"
	ExtRequestedPeriod      = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Task.requestedPeriod"
	SystemActCode           = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
	SystemDocRelation       = "http://hl7.org/fhir/document-relationship-type"
	SystemProvenanceAct     = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
	SystemActReason         = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
	SystemProvenanceAgent   = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
	SystemCommCategory      = "http://terminology.hl7.org/CodeSystem/communication-category"
	SystemMIME              = "urn:ietf:bcp:13"
	SystemCurrency          = "urn:iso:std:iso:4217"
	ValueSetAccessBusiness  = base + "/ValueSet/access-status"
	ValueSetAccessRequest   = base + "/ValueSet/request-type"
	ValueSetAccessDenial    = base + "/ValueSet/access-denial-ground"
	ValueSetAmendmentDenial = base + "/ValueSet/amendment-denial-ground"
)

// The HL7 Patient Request for Corrections IG (STU1 1.0.0).
const (
	IGBase                 = "http://hl7.org/fhir/uv/patient-corrections"
	SystemCorrectionTask   = IGBase + "/CodeSystem/PatientCorrectionTaskTypes"
	SystemCorrectionComm   = IGBase + "/CodeSystem/PatientCorrectionCommunicationTypes"
	SystemCorrectionOutput = IGBase + "/CodeSystem/PatientCorrectionOutputTypes"
	SystemCorrectionStatus = IGBase + "/CodeSystem/PatientCorrectionBusinessStatus"
	ProfileCorrectionTask  = IGBase + "/StructureDefinition/patient-correction-task"
	ProfileCorrectionComm  = IGBase + "/StructureDefinition/patient-correction-communication"
	ProfileCorrectionBndl  = IGBase + "/StructureDefinition/patient-correction-bundle"

	CodeCorrectionRequest = "medRecCxReq"
	CodeDisagreement      = "medRecCxDenialDisagree"
	CodeResolution        = "medRecCxReqResolution"
)

// Request types (Task.code) of Carta's request-type CodeSystem.
const (
	CodeAccessCopy     = "access-copy"
	CodeAccessInspect  = "access-inspect"
	CodeAccessDirected = "access-directed"
	CodeDenialReview   = "denial-review"
	CodeAccounting     = "accounting-of-disclosures"
)

// Kind is what rules govern a Task.
type Kind int

// The kinds of Task. KindNone is any other Task: a plain FHIR Task the rules leave alone.
const (
	KindNone Kind = iota
	KindAccess
	KindDenialReview
	KindAccounting
	KindAmendment
	KindDisagreement
)

func (k Kind) String() string {
	return [...]string{"plain Task", "access request", "denial review", "accounting-of-disclosures request", "amendment request", "statement of disagreement"}[k]
}

// Step is one status pair of a request Task.
type Step struct{ Status, Business string }

// Business statuses.
const (
	BSQueued           = "queued"
	BSInReview         = "in-review"
	BSWaiting          = "waiting-for-information"
	BSFeeSent          = "fee-estimate-sent"
	BSFulfilled        = "fulfilled"
	BSPartial          = "partially-fulfilled"
	BSDenied           = "denied"
	BSRedirected       = "not-held-redirected"
	BSCancelled        = "requester-cancelled"
	BSUpheld           = "upheld"
	BSReversed         = "reversed"
	BSAccepted         = "accepted"
	BSPartialAccept    = "partial-accept"
	BSAmended          = "amendment-completed"
	BSDisagreement     = "disagreement-logged"
	BSCompleted        = "completed"
	StatusReady        = "ready"
	StatusInProgress   = "in-progress"
	StatusCompleted    = "completed"
	StatusCancelled    = "cancelled"
	legacyInformRebutt = "inform-rebuttal-option"
	legacyPartialAmend = "partial-amendment-completed"
)

// pairs lists, per kind, every allowed status pair (rights.md §2.1, §2.6, §3).
var pairs = map[Kind]map[string]string{
	KindAccess: {
		BSQueued: StatusReady, BSInReview: StatusInProgress, BSWaiting: StatusInProgress, BSFeeSent: StatusInProgress,
		BSFulfilled: StatusCompleted, BSPartial: StatusCompleted, BSDenied: StatusCompleted, BSRedirected: StatusCompleted,
		BSCancelled: StatusCancelled,
	},
	KindDenialReview: {
		BSQueued: StatusReady, BSInReview: StatusInProgress, BSUpheld: StatusCompleted, BSReversed: StatusCompleted,
		BSCancelled: StatusCancelled,
	},
	KindAmendment: {
		BSQueued: StatusReady, BSInReview: StatusInProgress, BSWaiting: StatusInProgress, BSAccepted: StatusInProgress,
		BSPartialAccept: StatusInProgress, BSCancelled: StatusCancelled, BSAmended: StatusCompleted, BSDenied: StatusCompleted,
		BSDisagreement: StatusCompleted, BSCompleted: StatusCompleted,
	},
	KindDisagreement: {
		BSDisagreement: StatusCompleted, BSCompleted: StatusCompleted,
	},
}

func init() {
	pairs[KindAccounting] = pairs[KindAccess]
}

// businessSystem is the CodeSystem of a kind's businessStatus.
func businessSystem(k Kind) string {
	if k == KindAmendment || k == KindDisagreement {
		return SystemCorrectionStatus
	}
	return SystemAccessStatus
}

// Ground is a denial ground.
type Ground struct {
	Code, Display, Rule string
	Reviewable          bool
}

// AccessGrounds are the grounds for denying access (164.524(a)); the CLIA ground, removed in 2014, is not one.
var AccessGrounds = []Ground{
	{"psychotherapy-notes", "Psychotherapy notes", "45 CFR 164.524(a)(1)(i)", false},
	{"litigation-compilation", "Information compiled for a legal proceeding", "45 CFR 164.524(a)(1)(ii)", false},
	{"correctional-inmate", "Copy requested by an inmate of a correctional institution", "45 CFR 164.524(a)(2)(ii)", false},
	{"research-suspension", "Access suspended during research the individual agreed to", "45 CFR 164.524(a)(2)(iii)", false},
	{"privacy-act", "Records subject to the Privacy Act", "45 CFR 164.524(a)(2)(iv)", false},
	{"confidential-source", "Obtained from someone else under a promise of confidentiality", "45 CFR 164.524(a)(2)(v)", false},
	{"endanger-life-safety", "Access is reasonably likely to endanger life or physical safety", "45 CFR 164.524(a)(3)(i)", true},
	{"harm-referenced-person", "Access is reasonably likely to cause substantial harm to a person referenced", "45 CFR 164.524(a)(3)(ii)", true},
	{"harm-via-representative", "Access by the personal representative is reasonably likely to cause substantial harm", "45 CFR 164.524(a)(3)(iii)", true},
}

// AmendmentGrounds are the grounds for denying an amendment (164.526(a)(2)).
var AmendmentGrounds = []Ground{
	{"not-created-here", "The record was not created here (and its author is available to act on the request)", "45 CFR 164.526(a)(2)(i)", false},
	{"not-in-designated-record-set", "The information is not part of the designated record set", "45 CFR 164.526(a)(2)(ii)", false},
	{"not-available-for-inspection", "The information would not be available for inspection under 164.524", "45 CFR 164.526(a)(2)(iii)", false},
	{"accurate-and-complete", "The record is accurate and complete", "45 CFR 164.526(a)(2)(iv)", false},
}

func findGround(list []Ground, code string) (Ground, bool) {
	for _, g := range list {
		if g.Code == code {
			return g, true
		}
	}
	return Ground{}, false
}

// Access inputs (Carta access-input CodeSystem).
const (
	InRequestedRecords = "requested-records"
	InRequestedFormat  = "requested-format"
	InDelivery         = "delivery"
	InRecipient        = "recipient"
	InDestination      = "destination"
	InSignedDirective  = "signed-directive"
)

var accessInputs = []string{InRequestedRecords, InRequestedFormat, InDelivery, InRecipient, InDestination, InSignedDirective}

// DeliveryMethods are the codes of the delivery input.
var DeliveryMethods = []string{"api", "portal", "email", "mail", "portable-media", "in-person"}

// Access outputs (Carta access-output CodeSystem).
const (
	OutFeeEstimate    = "fee-estimate"
	OutFeeBasis       = "fee-basis"
	OutDelivered      = "delivered"
	OutFormatAgreed   = "format-agreed"
	OutRedirectTo     = "redirect-to"
	OutDenialNotice   = "denial-notice"
	OutReviewDecision = "review-decision"
	OutExtension      = "extension-notice"
	OutRebuttal       = "rebuttal"
)

// Notice types (Communication.category of the letters the server sends).
const (
	NoticeExtension       = "extension-notice"
	NoticeFeeEstimate     = "fee-estimate"
	NoticeFulfilled       = "fulfilment-notice"
	NoticeRedirect        = "redirect-notice"
	NoticeDenial          = "denial-notice"
	NoticeReviewDecision  = "review-decision"
	NoticeAmended         = "amendment-notice"
	NoticeAmendmentToPeer = "amendment-notification"
	NoticeRebuttal        = "rebuttal"
	NoticeCancelled       = "cancellation-notice"
)

// Dispute roles (meta.tag of the DocumentReferences linked to a disputed record, 164.526(d)(4)).
const (
	DisputeRequest      = "amendment-request"
	DisputeDenial       = "amendment-denial"
	DisputeDisagreement = "statement-of-disagreement"
	DisputeRebuttal     = "rebuttal"
)

// Qualification marks a licensed health care professional on Practitioner.qualification (besides the clinical
// degrees of HL7 v2 table 0360), for who may decide a review (164.524(a)(4)).
const (
	SystemQualification   = base + "/CodeSystem/qualification"
	QualificationLicensed = "licensed-health-care-professional"
)

// FlatFeeLimit is the optional flat fee for an electronic copy of electronic records (OCR guidance on
// 164.524(c)(4)), in US dollars.
const FlatFeeLimit = 6.50
