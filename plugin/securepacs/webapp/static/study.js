// One study: header and a thumbnail per series, each opening the viewer at that series.
import { api, dicomDate, el, personName, startSession } from "/assets/common.js";

const studyId = location.pathname.split("/")[2];

async function load() {
  const response = await api(`/securepacs/api/viewer/studies/${studyId}`);
  const study = await response.json();
  if (!response.ok) { document.getElementById("status").textContent = study.error || `Error ${response.status}`; return; }
  document.getElementById("study-title").textContent =
    `${personName(study.patient.PatientName)} — ${study.study.StudyDescription || "study"}`;
  document.getElementById("study-info").textContent =
    `Patient ID ${study.patient.PatientID} · ${dicomDate(study.study.StudyDate)} · accession ${study.study.AccessionNumber || "–"} · ` +
    `${study.series.length} series, ${study.instances} images`;
  document.getElementById("series").replaceChildren(...study.series.map((series, index) => {
    const middle = series.frames[Math.floor(series.frames.length / 2)];
    const thumb = middle ? el("img", {
      src: `/securepacs/api/viewer/instances/${middle[0]}/frames/${middle[1]}/rendered?size=160&quality=80`,
      alt: `Series ${series.number} thumbnail`, loading: "lazy", width: "160", height: "160",
    }) : el("span", { text: "no images" });
    return el("li", {}, el("a", { href: `/view/${studyId}#series=${index}` }, thumb,
      el("span", { text: `${series.modality} ${series.number}: ${series.description || "series"} (${series.frames.length})` })));
  }));
}

startSession().then(load);
