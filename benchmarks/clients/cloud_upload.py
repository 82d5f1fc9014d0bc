"""Upload one file with the plain SDK calls a user script would make: boto3's
``upload_file`` (managed multipart transfer, default settings) or google-cloud-storage's
``Blob.upload_from_filename`` (resumable upload, default settings).

``python -m benchmarks.clients.cloud_upload s3 ENDPOINT BUCKET KEY FILE``
``python -m benchmarks.clients.cloud_upload gcs BUCKET NAME FILE`` (``STORAGE_EMULATOR_HOST``
points at the server). Prints the size the server reports.
"""

import sys


def s3(endpoint, bucket, key, path):
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.upload_file(path, bucket, key)
    print(client.head_object(Bucket=bucket, Key=key)["ContentLength"])


def gcs(bucket, name, path):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="bench", credentials=AnonymousCredentials())
    blob = client.bucket(bucket).blob(name)
    blob.upload_from_filename(path)
    blob.reload()
    print(blob.size)


if __name__ == "__main__":
    kind, *args = sys.argv[1:]
    {"s3": s3, "gcs": gcs}[kind](*args)
