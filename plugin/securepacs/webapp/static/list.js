// The clinic's study list: search, newest first, paged. All data over /securepacs/api/studies.
import { api, dicomDate, el, personName, startSession } from "/assets/common.js";

const LIMIT = 25;
let offset = 0;

function query() {
  const form = new FormData(document.getElementById("search"));
  const params = new URLSearchParams({ limit: String(LIMIT), offset: String(offset) });
  for (const [key, value] of form) {
    const text = String(value).trim();
    if (text) params.set(key, key === "from" || key === "to" ? text.replaceAll("-", "") : text);
  }
  return params;
}

function row(study) {
  const cell = (label, text) => el("td", { "data-label": label, text });
  const open = el("td", { "data-label": "Open" },
    el("a", { class: "button", href: `/view/${study.ID}`, text: "View" }), " ",
    el("a", { class: "button", href: `/study/${study.ID}`, text: "Series" }));
  return el("tr", {},
    cell("Date", dicomDate(study.StudyDate)), cell("Patient", personName(study.PatientName)),
    cell("Patient ID", study.PatientID), cell("Description", study.StudyDescription),
    cell("Modality", study.ModalitiesInStudy), cell("Accession", study.AccessionNumber),
    cell("Series / images", `${study.NumberOfStudyRelatedSeries ?? "?"} / ${study.NumberOfStudyRelatedInstances ?? "?"}`),
    open);
}

async function load() {
  const status = document.getElementById("status");
  status.textContent = "Searching…";
  const response = await api(`/securepacs/api/studies?${query()}`);
  const answer = await response.json();
  if (!response.ok) { status.textContent = answer.error || `Search failed (${response.status})`; return; }
  const body = document.querySelector("#studies tbody");
  body.replaceChildren(...answer.studies.map(row));
  const last = Math.min(answer.total, offset + answer.studies.length);
  status.textContent = answer.total ? `${answer.total} studies` : "No studies match.";
  document.getElementById("page").textContent = answer.total ? `${offset + 1}–${last} of ${answer.total}` : "";
  document.getElementById("prev").disabled = offset === 0;
  document.getElementById("next").disabled = last >= answer.total;
}

document.getElementById("search").addEventListener("submit", (event) => { event.preventDefault(); offset = 0; load(); });
document.getElementById("clear").addEventListener("click", () => { offset = 0; setTimeout(load, 0); });
document.getElementById("prev").addEventListener("click", () => { offset = Math.max(0, offset - LIMIT); load(); });
document.getElementById("next").addEventListener("click", () => { offset += LIMIT; load(); });
startSession().then(load);
