"""Thought browser: one document's chunks with the K sampled thoughts, their importance weights and
the one resampled for the M-step."""

import streamlit as st

from dashboard import data, figures

st.title("Thought browser")

estep_runs = data.load_estep_runs()

c1, c2, c3 = st.columns([3, 1, 2])
run_id = c1.selectbox("Run", estep_runs["run_id"].tolist(), key="th_run")
iterations = estep_runs.set_index("run_id").loc[run_id, "iterations"]
iteration = c2.selectbox("Iteration", list(iterations), key="th_iter")
pattern = c3.text_input("Document id contains", key="th_search")
docs = data.load(data.DOC_IDS_SQL, run_id, int(iteration), f"%{pattern}%")  # bound, never spliced
if docs.empty:
    st.info(f"No document id contains {pattern!r} in iteration {iteration}.")
    st.stop()
doc_id = st.selectbox("Document", docs["doc_id"].tolist(), key="th_doc",
                      help="The first 500 matching documents")

doc = data.with_weights(data.load(data.DOC_SAMPLES_SQL, run_id, int(iteration), doc_id))
st.plotly_chart(figures.chunk_weights(doc), key="th_weights")

columns = ["sample_idx", "selected", "weight", "log_w", "log_p_joint", "log_q", "thought_tokens", "finished", "thought"]
for chunk_id, chunk in doc.groupby("chunk_id", sort=True):
    st.subheader(f"Chunk {chunk_id}")
    if "chunk_text" in chunk.columns and chunk["chunk_text"].notna().any():  # older runs stored no text
        st.text(chunk["chunk_text"].dropna().iloc[0])
    picked = chunk[chunk["selected"].astype(bool)]
    if len(picked):
        row = picked.iloc[0]
        st.success(f"Selected: sample {row.sample_idx} (weight {row.weight:.3f}, log w {row.log_w:.3f})")
        st.code(row.thought, language=None, wrap_lines=True)  # verbatim: thoughts hold `*` and `_`
    else:
        st.warning("No sample of this chunk is marked selected.")
    st.dataframe(chunk[columns], hide_index=True, width="stretch",
                 column_config={"weight": st.column_config.ProgressColumn("weight", min_value=0.0, max_value=1.0,
                                                                          format="%.3f")})
